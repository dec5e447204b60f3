// /v1/principals: devices, services and admins; their keys (issued once, listed without secrets,
// rotated, revoked) and their grants across datasets.
import { z } from 'zod'
import {
  etagOf, keyInputSchema, keyRotateSchema, principalInputSchema, principalKinds, principalUpdateSchema, PRINCIPAL_ID, publicKey
} from '../gateway/index.js'
import { actorOf } from './auth.js'
import { operation, type Operation } from './contract.js'
import type { RouteContext } from './context.js'
import { apiKeySchema, cursorParam, grantSchemaOut, issuedKeySchema, limitParam, pageOf, principalSchema } from './schemas.js'

const principalId = z.object({ id: z.string().regex(PRINCIPAL_ID, 'a principal id: ^[A-Za-z0-9_][A-Za-z0-9_:@-]{0,127}$') })
const keyPath = principalId.extend({ keyId: z.string().regex(/^key_[A-Za-z0-9_]{1,64}$/, 'a key id: key_…') })
const etagHeader = { ETag: 'the resource\'s ETag, for If-Match' }
const noStore = { 'Cache-Control': 'no-store' }

export function principalRoutes ({ management, guard }: RouteContext): Operation[] {
  return [
    operation<Record<string, never>, { limit: number, cursor?: string | undefined, kind?: typeof principalKinds[number] | undefined }>({
      method: 'get', path: '/principals', operationId: 'listPrincipals', tag: 'principals',
      summary: 'Principals by id, in pages (admin)',
      query: z.object({ limit: limitParam, cursor: cursorParam, kind: z.enum(principalKinds).optional() }),
      responses: { 200: { description: 'A page of principals', schema: pageOf('principals', principalSchema) } },
      handle ({ query, req }) {
        guard.admin(req)
        const p = management.listPrincipals({ limit: query.limit, ...(query.cursor !== undefined ? { after: query.cursor } : {}), ...(query.kind !== undefined ? { kind: query.kind } : {}) })
        return { status: 200, body: { principals: p.items, next: p.next } }
      }
    }),
    operation<Record<string, never>, Record<string, never>, z.output<typeof principalInputSchema>>({
      method: 'post', path: '/principals', operationId: 'createPrincipal', tag: 'principals', idempotent: true,
      summary: 'Create a principal: a device, a service or an admin (admin)',
      body: principalInputSchema,
      responses: { 201: { description: 'Created', schema: principalSchema, headers: { ...etagHeader, Location: 'its URL' } }, 409: { description: 'It exists (`conflict`)' } },
      async handle ({ body, req }) {
        guard.admin(req)
        const p = await management.createPrincipal(body, actorOf(req))
        return { status: 201, body: p, headers: { ETag: etagOf(p), Location: `/v1/principals/${p.id}` } }
      }
    }),
    operation<{ id: string }>({
      method: 'get', path: '/principals/{id}', operationId: 'getPrincipal', tag: 'principals',
      summary: 'A principal (admin)',
      params: principalId,
      responses: { 200: { description: 'The principal', schema: principalSchema, headers: etagHeader }, 404: { description: 'No such principal' } },
      handle ({ params, req }) {
        guard.admin(req)
        const p = management.getPrincipal(params.id)
        return { status: 200, body: p, headers: { ETag: etagOf(p) } }
      }
    }),
    operation<{ id: string }, Record<string, never>, z.output<typeof principalUpdateSchema>>({
      method: 'patch', path: '/principals/{id}', operationId: 'updatePrincipal', tag: 'principals', ifMatch: true,
      summary: 'Change a principal\'s description or disable it (admin); disabling ends its sessions',
      params: principalId, body: principalUpdateSchema,
      responses: { 200: { description: 'The principal as changed', schema: principalSchema, headers: etagHeader }, 404: { description: 'No such principal' } },
      async handle ({ params, body, req }) {
        guard.admin(req)
        const p = await management.updatePrincipal(params.id, body, req.get('if-match'), actorOf(req))
        return { status: 200, body: p, headers: { ETag: etagOf(p) } }
      }
    }),
    operation<{ id: string }>({
      method: 'delete', path: '/principals/{id}', operationId: 'deletePrincipal', tag: 'principals',
      summary: 'Delete a principal with its keys and grants (admin); its sessions end',
      params: principalId,
      responses: { 204: { description: 'Deleted' }, 404: { description: 'No such principal' }, 412: { description: 'If-Match does not match' } },
      async handle ({ params, req }) {
        guard.admin(req)
        await management.deletePrincipal(params.id, req.get('if-match'), actorOf(req))
        return { status: 204 }
      }
    }),
    operation<{ id: string }>({
      method: 'get', path: '/principals/{id}/access', operationId: 'getPrincipalAccess', tag: 'access',
      summary: 'A principal\'s grants on every dataset (admin)',
      params: principalId,
      responses: { 200: { description: 'Its grants', schema: z.object({ grants: z.array(grantSchemaOut) }), headers: etagHeader } },
      handle ({ params, req }) {
        guard.admin(req)
        management.getPrincipal(params.id)
        const grants = management.access.principalGrants(params.id)
        return { status: 200, body: { grants }, headers: { ETag: etagOf(grants) } }
      }
    }),

    // ---- keys
    operation<{ id: string }, Record<string, never>, z.output<typeof keyInputSchema>>({
      method: 'post', path: '/principals/{id}/keys', operationId: 'issueKey', tag: 'keys', idempotent: true,
      summary: 'Issue an API key (admin); the secret is in this answer only',
      params: principalId, body: keyInputSchema,
      responses: { 201: { description: 'Issued', schema: issuedKeySchema, headers: { ...etagHeader, 'Cache-Control': 'no-store' } }, 404: { description: 'No such principal' } },
      async handle ({ params, body, req }) {
        guard.admin(req)
        const { key, secret } = await management.issueKey(params.id, body, actorOf(req))
        return { status: 201, body: { ...publicKey(key), key: secret }, headers: { ...noStore, ETag: etagOf(publicKey(key)) } }
      }
    }),
    operation<{ id: string }>({
      method: 'get', path: '/principals/{id}/keys', operationId: 'listKeys', tag: 'keys',
      summary: 'A principal\'s keys, without secrets (admin)',
      params: principalId,
      responses: { 200: { description: 'Its keys', schema: z.object({ keys: z.array(apiKeySchema) }) } },
      handle ({ params, req }) {
        guard.admin(req)
        management.getPrincipal(params.id)
        const keys = management.access.keysOf(params.id).map(publicKey).sort((a, b) => a.createdAt < b.createdAt ? -1 : a.createdAt > b.createdAt ? 1 : 0)
        return { status: 200, body: { keys } }
      }
    }),
    operation<{ id: string, keyId: string }>({
      method: 'get', path: '/principals/{id}/keys/{keyId}', operationId: 'getKey', tag: 'keys',
      summary: 'One key, without its secret (admin)',
      params: keyPath,
      responses: { 200: { description: 'The key', schema: apiKeySchema, headers: etagHeader }, 404: { description: 'No such key' } },
      handle ({ params, req }) {
        guard.admin(req)
        const k = publicKey(management.getKey(params.id, params.keyId))
        return { status: 200, body: k, headers: { ETag: etagOf(k) } }
      }
    }),
    operation<{ id: string, keyId: string }, Record<string, never>, z.output<typeof keyRotateSchema>>({
      method: 'post', path: '/principals/{id}/keys/{keyId}/rotate', operationId: 'rotateKey', tag: 'keys', idempotent: true,
      summary: 'Issue a replacement key; the old one stops working after graceSeconds (admin)',
      params: keyPath, body: keyRotateSchema,
      responses: { 201: { description: 'The new key (its secret in this answer only)', schema: issuedKeySchema, headers: { ...etagHeader, 'Cache-Control': 'no-store' } }, 404: { description: 'No such key' }, 409: { description: 'The key is revoked' } },
      async handle ({ params, body, req }) {
        guard.admin(req)
        const { key, secret } = await management.rotateKey(params.id, params.keyId, body, actorOf(req))
        return { status: 201, body: { ...publicKey(key), key: secret }, headers: { ...noStore, ETag: etagOf(publicKey(key)) } }
      }
    }),
    operation<{ id: string, keyId: string }>({
      method: 'delete', path: '/principals/{id}/keys/{keyId}', operationId: 'revokeKey', tag: 'keys',
      summary: 'Revoke a key (admin); sessions using it end at once',
      params: keyPath,
      responses: { 204: { description: 'Revoked' }, 404: { description: 'No such key' } },
      async handle ({ params, req }) {
        guard.admin(req)
        await management.revokeKey(params.id, params.keyId, actorOf(req))
        return { status: 204 }
      }
    })
  ]
}
