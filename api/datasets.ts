// /v1/datasets: create, list (keyset pages, id prefix), read, change in place when compatible,
// delete (stored records only with ?purge=true), schema versions, and who may use a dataset.
import { z } from 'zod'
import { datasetInputSchema, datasetSchemaSchema, datasetUpdateSchema, DATASET_ID, etagOf, grantSchema, grantsInputSchema, incompatibilities, PRINCIPAL_ID, publicDataset } from '../gateway/index.js'
import { actorOf, userOf } from './auth.js'
import { operation, type Operation } from './contract.js'
import type { RouteContext } from './context.js'
import { cursorParam, datasetSchema, grantSchemaOut, limitParam, pageOf } from './schemas.js'

const datasetId = z.object({ id: z.string().regex(DATASET_ID, 'a dataset id: ^[a-z][a-z0-9_]{0,62}$') })
const accessSchema = z.object({ grants: z.array(grantSchemaOut) }).meta({ id: 'Access' })
const versionSchema = z.object({ version: z.number().int(), schema: datasetSchema.shape.schema, current: z.boolean(), updatedAt: z.string() }).meta({ id: 'DatasetVersion' })
const newVersionSchema = z.strictObject({ schema: datasetSchemaSchema, description: z.string().max(1024).optional() }).meta({ id: 'NewDatasetVersion' })
const etagHeader = { ETag: 'the resource\'s ETag, for If-Match' }

export function datasetRoutes ({ management, guard }: RouteContext): Operation[] {
  return [
    operation<Record<string, never>, { limit: number, cursor?: string | undefined, prefix?: string | undefined }>({
      method: 'get', path: '/datasets', operationId: 'listDatasets', tag: 'datasets',
      summary: 'Datasets the caller holds a grant on (admins: all), by id, in pages',
      query: z.object({ limit: limitParam, cursor: cursorParam, prefix: z.string().max(63).optional().describe('only ids starting with this') }),
      responses: { 200: { description: 'A page of datasets', schema: pageOf('datasets', datasetSchema) } },
      handle ({ query, req }) {
        const u = userOf(req)
        const p = management.listDatasets({ limit: query.limit, ...(query.cursor !== undefined ? { after: query.cursor } : {}), ...(query.prefix !== undefined ? { prefix: query.prefix } : {}), ...(u.principal.kind === 'admin' ? {} : { visibleTo: u.principal.id }) })
        return { status: 200, body: { datasets: p.items.map(publicDataset), next: p.next } }
      }
    }),
    operation<Record<string, never>, Record<string, never>, z.output<typeof datasetInputSchema>>({
      method: 'post', path: '/datasets', operationId: 'createDataset', tag: 'datasets', idempotent: true,
      summary: 'Create a dataset (admin)',
      body: datasetInputSchema,
      responses: { 201: { description: 'Created (version 1)', schema: datasetSchema, headers: { ...etagHeader, Location: 'the dataset\'s URL' } }, 409: { description: 'It exists (`conflict`)' } },
      async handle ({ body, req }) {
        guard.admin(req)
        const d = await management.createDataset(body, actorOf(req))
        return { status: 201, body: publicDataset(d), headers: { ETag: etagOf(d), Location: `/v1/datasets/${d.id}` } }
      }
    }),
    operation<{ id: string }>({
      method: 'get', path: '/datasets/{id}', operationId: 'getDataset', tag: 'datasets',
      summary: 'A dataset (any grant on it)',
      params: datasetId,
      responses: { 200: { description: 'The dataset', schema: datasetSchema, headers: etagHeader }, 404: { description: 'No such dataset (`not-found`)' } },
      handle ({ params, req }) {
        guard.grant(req, params.id, 'publish', 'subscribe', 'query', 'manage')
        const d = management.getDataset(params.id)
        return { status: 200, body: publicDataset(d), headers: { ETag: etagOf(d) } }
      }
    }),
    operation<{ id: string }, Record<string, never>, z.output<typeof datasetUpdateSchema>>({
      method: 'put', path: '/datasets/{id}', operationId: 'updateDataset', tag: 'datasets', ifMatch: true,
      summary: 'Change the description, or the schema when the change is compatible (manage)',
      description: 'Compatible: tags and optional fields added, fields made optional. Anything else is 409 incompatible-schema listing the problems.',
      params: datasetId, body: datasetUpdateSchema,
      responses: { 200: { description: 'The dataset as changed', schema: datasetSchema, headers: etagHeader }, 404: { description: 'No such dataset' }, 409: { description: 'Incompatible schema change (`incompatible-schema`)' } },
      async handle ({ params, body, req }) {
        guard.grant(req, params.id, 'manage')
        const d = await management.updateDataset(params.id, body, req.get('if-match'), actorOf(req))
        return { status: 200, body: publicDataset(d), headers: { ETag: etagOf(d) } }
      }
    }),
    operation<{ id: string }, Record<string, never>, { schema: z.output<typeof datasetSchemaSchema> }>({
      method: 'post', path: '/datasets/{id}/compatibility', operationId: 'checkSchemaCompatibility', tag: 'datasets',
      summary: 'Whether a schema could replace the current one in place (PUT) or needs a new version, and why (manage); changes nothing',
      params: datasetId, body: z.strictObject({ schema: datasetSchemaSchema }),
      responses: { 200: { description: 'The answer', schema: z.object({ compatible: z.boolean(), problems: z.array(z.string()) }) }, 404: { description: 'No such dataset' } },
      handle ({ params, body, req }) {
        guard.grant(req, params.id, 'manage')
        const problems = incompatibilities(management.getDataset(params.id).schema, body.schema)
        return { status: 200, body: { compatible: problems.length === 0, problems } }
      }
    }),
    operation<{ id: string }, { purge: boolean }>({
      method: 'delete', path: '/datasets/{id}', operationId: 'deleteDataset', tag: 'datasets',
      summary: 'Delete a dataset, its grants and rejects; its stored records with ?purge=true (admin)',
      description: 'Without purge, a dataset that has stored records is refused (409 dataset-not-empty). If-Match is honoured when sent.',
      params: datasetId,
      query: z.object({ purge: z.enum(['true', 'false']).default('false').transform((v) => v === 'true').describe('also delete the stored records') }),
      responses: { 204: { description: 'Deleted' }, 404: { description: 'No such dataset' }, 409: { description: 'It has stored records (`dataset-not-empty`)' }, 412: { description: 'If-Match does not match (`precondition-failed`)' } },
      async handle ({ params, query, req }) {
        guard.admin(req)
        await management.deleteDataset(params.id, { purge: query.purge, ifMatch: req.get('if-match') }, actorOf(req))
        return { status: 204 }
      }
    }),
    operation<{ id: string }>({
      method: 'get', path: '/datasets/{id}/versions', operationId: 'listDatasetVersions', tag: 'datasets',
      summary: 'The schema versions of a dataset (any grant on it)',
      description: 'Compatible changes apply in place to the current version; POST a new version for any other change.',
      params: datasetId,
      responses: { 200: { description: 'Versions, newest first', schema: z.object({ versions: z.array(versionSchema) }), headers: etagHeader } },
      handle ({ params, req }) {
        guard.grant(req, params.id, 'publish', 'subscribe', 'query', 'manage')
        const current = management.getDataset(params.id).version
        const versions = management.catalog.versionsOf(params.id).map((d) => ({ version: d.version, schema: d.schema, current: d.version === current, updatedAt: d.updatedAt }))
        return { status: 200, body: { versions }, headers: { ETag: etagOf(versions) } }
      }
    }),
    operation<{ id: string }, Record<string, never>, z.output<typeof newVersionSchema>>({
      method: 'post', path: '/datasets/{id}/versions', operationId: 'createDatasetVersion', tag: 'datasets', idempotent: true,
      summary: 'Make a new schema version current, for changes that are not compatible (manage)',
      description: 'Records published from now on are validated against it and stored apart; read earlier ones with `version` in queries.',
      params: datasetId, body: newVersionSchema,
      responses: { 201: { description: 'The dataset at its new version', schema: datasetSchema, headers: etagHeader } },
      async handle ({ params, body, req }) {
        guard.grant(req, params.id, 'manage')
        const d = await management.createVersion(params.id, body, actorOf(req))
        return { status: 201, body: publicDataset(d), headers: { ETag: etagOf(d) } }
      }
    }),

    // ---- who may use the dataset
    operation<{ id: string }>({
      method: 'get', path: '/datasets/{id}/access', operationId: 'getDatasetAccess', tag: 'access',
      summary: 'Every grant on a dataset (manage)',
      params: datasetId,
      responses: { 200: { description: 'The grants', schema: accessSchema, headers: etagHeader } },
      handle ({ params, req }) {
        guard.grant(req, params.id, 'manage')
        const a = management.datasetAccess(params.id)
        return { status: 200, body: { grants: a.grants }, headers: { ETag: a.etag } }
      }
    }),
    operation<{ id: string }, Record<string, never>, z.output<typeof grantsInputSchema>>({
      method: 'put', path: '/datasets/{id}/access', operationId: 'setDatasetAccess', tag: 'access', ifMatch: true,
      summary: 'Replace every grant on a dataset (manage)',
      params: datasetId, body: grantsInputSchema,
      responses: { 200: { description: 'The grants now', schema: accessSchema, headers: etagHeader } },
      async handle ({ params, body, req }) {
        guard.grant(req, params.id, 'manage')
        const grants = await management.setGrants(params.id, body, req.get('if-match'), actorOf(req))
        return { status: 200, body: { grants }, headers: { ETag: management.datasetAccess(params.id).etag } }
      }
    }),
    operation<{ id: string }, Record<string, never>, z.output<typeof grantSchema>>({
      method: 'post', path: '/datasets/{id}/access', operationId: 'grantDatasetAccess', tag: 'access', idempotent: true,
      summary: 'Grant one principal actions on a dataset, replacing its earlier grant there (manage)',
      params: datasetId, body: grantSchema,
      responses: {
        201: { description: 'Granted', schema: grantSchemaOut, headers: { ETag: 'the dataset\'s access (GET /datasets/{id}/access) as it is now, for If-Match' } },
        200: { description: 'Its grant was replaced', schema: grantSchemaOut, headers: { ETag: 'the dataset\'s access as it is now, for If-Match' } }
      },
      async handle ({ params, body, req }) {
        guard.grant(req, params.id, 'manage')
        const r = await management.putGrant(params.id, body, actorOf(req))
        return { status: r.created ? 201 : 200, body: r.grant, headers: { ETag: management.datasetAccess(params.id).etag } }
      }
    }),
    operation<{ id: string, principal: string }>({
      method: 'delete', path: '/datasets/{id}/access/{principal}', operationId: 'revokeDatasetAccess', tag: 'access',
      summary: 'Take a principal\'s grant on a dataset away (manage); deliveries to it stop at once',
      params: datasetId.extend({ principal: z.string().regex(PRINCIPAL_ID) }),
      responses: { 204: { description: 'Revoked' }, 404: { description: 'No such grant' } },
      async handle ({ params, req }) {
        guard.grant(req, params.id, 'manage')
        await management.removeGrant(params.id, params.principal, actorOf(req))
        return { status: 204 }
      }
    })
  ]
}
