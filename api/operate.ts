// Operating the gateway: status, live MQTT sessions, the audit log, tokens for browsers and scripts,
// and the endpoints outside /v1 (health, readiness, metrics).
import { z } from 'zod'
import { type AuditLog, auditOutcomes, NODE_ID, StreamgateError } from '../gateway/index.js'
import { actorOf, userOf } from './auth.js'
import { operation, type Operation } from './contract.js'
import type { RouteContext } from './context.js'
import type { Metrics } from './metrics.js'
import { auditEntrySchema, clientSchema, cursorParam, limitParam, nodeSchema, recoverySchema, statusSchema } from './schemas.js'

const verifySchema = z.object({ ok: z.boolean(), checked: z.number().int(), lastSeq: z.number().int(), firstBroken: z.object({ seq: z.number().int(), reason: z.string() }).nullable() }).meta({ id: 'AuditVerification' })
const isoTime = z.iso.datetime({ offset: true })

export function operateRoutes ({ deps, management, guard }: RouteContext, audit: AuditLog, metrics: Metrics): Operation[] {
  return [
    operation({
      method: 'get', path: '/healthz', root: true, public: true, operationId: 'health', tag: 'operations',
      summary: 'The process is up (503 once the journal has failed: restart it)',
      responses: { 200: { description: 'Up', schema: z.object({ status: z.literal('ok'), journal: z.literal('ok') }) }, 503: { description: 'The journal failed', schema: z.object({ status: z.literal('failing'), journal: z.literal('failed') }), contentType: 'application/json' } },
      handle () {
        const ok = deps.journal.healthy
        return ok ? { status: 200, body: { status: 'ok', journal: 'ok' } } : { status: 503, body: { status: 'failing', journal: 'failed' }, headers: { 'Content-Type': 'application/json' } }
      }
    }),
    operation({
      method: 'get', path: '/readyz', root: true, public: true, operationId: 'ready', tag: 'operations',
      summary: 'Ready for traffic: listeners bound, journal replayed and writable, sinks running',
      responses: {
        200: { description: 'Ready', schema: z.object({ ready: z.literal(true), checks: z.record(z.string(), z.union([z.boolean(), z.string()])) }) },
        503: { description: 'Not ready, with the failing checks', schema: z.object({ ready: z.literal(false), checks: z.record(z.string(), z.union([z.boolean(), z.string()])) }), contentType: 'application/json' }
      },
      handle () {
        const r = deps.readiness()
        return { status: r.ready ? 200 : 503, body: r, headers: { 'Content-Type': 'application/json' } }
      }
    }),
    operation({
      method: 'get', path: '/metrics', root: true, public: true, operationId: 'metrics', tag: 'operations',
      summary: 'Prometheus metrics (text exposition format)',
      responses: { 200: { description: 'Metrics', contentType: 'text/plain; version=0.0.4', schema: z.string() } },
      async handle ({ res }) {
        res.setHeader('Content-Type', metrics.registry.contentType)
        res.status(200).end(await metrics.registry.metrics())
        return { status: 200 }
      }
    }),
    operation({
      method: 'get', path: '/status', operationId: 'getStatus', tag: 'operations',
      summary: 'Journal, sinks (checkpoint, lag, breaker), query breaker, RabbitMQ, MQTT sessions, refusals, memory (admin)',
      responses: { 200: { description: 'Status', schema: statusSchema } },
      handle ({ req }) {
        guard.admin(req)
        return {
          status: 200,
          body: {
            journal: {
              committedSeq: deps.journal.committedSeq, bytes: deps.journal.bytes, healthy: deps.journal.healthy, ...deps.journal.stats,
              recovery: { truncatedBytes: deps.journal.recovery.truncatedBytes, droppedSeqs: deps.journal.recovery.droppedSeqs.slice(0, 1000) }
            },
            consumers: deps.consumers.map((c) => c.status()),
            ...(deps.queryBreaker !== undefined ? { query: { breaker: deps.queryBreaker() } } : {}),
            ...(deps.amqpStatus !== undefined ? { amqp: deps.amqpStatus() } : {}),
            ...(deps.replicationStatus !== undefined ? { replication: deps.replicationStatus() } : {}),
            mqtt: { sessions: deps.broker.sessions().length, ...deps.broker.stats },
            rejected: deps.rejects.counts(null),
            memory: { ...process.memoryUsage(), ...deps.memory?.() }
          }
        }
      }
    }),
    operation({
      method: 'get', path: '/cluster', operationId: 'listNodes', tag: 'operations',
      summary: 'The gateway nodes sharing this one\'s Redis (STREAMGATE_REDIS_URL), this one first: sessions and consumer lag of each (admin)',
      responses: { 200: { description: 'Nodes', schema: z.object({ nodes: z.array(nodeSchema) }) } },
      async handle ({ req }) {
        guard.admin(req)
        return { status: 200, body: { nodes: await deps.cluster() } }
      }
    }),
    operation<{ id: string }>({
      method: 'post', path: '/cluster/nodes/{id}/recover', operationId: 'recoverNode', tag: 'operations',
      summary: 'Store what a node lost for good had acknowledged, from its replicated journal (STREAMGATE_REPLICATION), through this node (admin)',
      description: 'Reads the node\'s RabbitMQ stream from its first message and appends every entry to this node\'s journal, keeping the lost node\'s identity (QuestDB rows replace any it stored already). Refused while the node is alive (listed by GET /v1/cluster). Recovering again appends nothing this node recovered before.',
      params: z.object({ id: z.string().regex(NODE_ID) }),
      responses: {
        200: { description: 'Recovered', schema: recoverySchema },
        404: { description: 'The node has no replicated journal' },
        409: { description: 'Replication is off here, or the node is alive (or is this one)' }
      },
      async handle ({ params, req }) {
        guard.admin(req)
        if (deps.recoverNode === undefined) throw new StreamgateError('SG_ERR_CONFLICT', 'recovery reads a lost node\'s replicated journal: set STREAMGATE_REPLICATION=rabbitmq-stream (and STREAMGATE_AMQP_URL) on this node', { field: 'id' })
        const result = await deps.recoverNode(params.id)
        await management.note(actorOf(req), 'node.recover', `cluster/nodes/${params.id}`, `${result.recovered} entries recovered, ${result.duplicates} recovered before, ${result.skipped} of unknown datasets`)
        return { status: 200, body: result }
      }
    }),
    operation<Record<string, never>, { principal?: string | undefined }>({
      method: 'get', path: '/clients', operationId: 'listClients', tag: 'operations',
      summary: 'Live MQTT sessions (admin)',
      query: z.object({ principal: z.string().max(128).optional() }),
      responses: { 200: { description: 'Sessions by client id', schema: z.object({ clients: z.array(clientSchema) }) } },
      handle ({ query, req }) {
        guard.admin(req)
        const all = deps.broker.sessions()
        return { status: 200, body: { clients: query.principal === undefined ? all : all.filter((c) => c.principal === query.principal) } }
      }
    }),
    operation<{ clientId: string }>({
      method: 'delete', path: '/clients/{clientId}', operationId: 'kickClient', tag: 'operations',
      summary: 'End a live MQTT session (admin); the client may reconnect unless its key is revoked',
      params: z.object({ clientId: z.string().min(1).max(65535) }),
      responses: { 204: { description: 'Disconnected' }, 404: { description: 'No such session' } },
      async handle ({ params, req }) {
        guard.admin(req)
        const session = deps.broker.sessions().find((c) => c.clientId === params.clientId)
        if (session === undefined || !deps.broker.kick(params.clientId)) throw new StreamgateError('SG_ERR_NOT_FOUND', `no live session ${params.clientId}`)
        await management.note(actorOf(req), 'client.kick', `clients/${params.clientId}`, `session of ${session.principal} ended`)
        return { status: 204 }
      }
    }),
    operation<Record<string, never>, { limit: number, cursor?: string | undefined, actor?: string | undefined, action?: string | undefined, resource?: string | undefined, outcome?: typeof auditOutcomes[number] | undefined, since?: string | undefined, until?: string | undefined }>({
      method: 'get', path: '/audit', operationId: 'listAudit', tag: 'audit',
      summary: 'The audit log, newest first, with filters (admin)',
      query: z.object({
        limit: limitParam, cursor: cursorParam,
        actor: z.string().max(128).optional(), action: z.string().max(64).optional(), resource: z.string().max(512).optional().describe('entries whose resource starts with this'),
        outcome: z.enum(auditOutcomes).optional(), since: isoTime.optional(), until: isoTime.optional()
      }),
      responses: { 200: { description: 'Entries', schema: z.object({ entries: z.array(auditEntrySchema), next: z.string().nullable() }) } },
      async handle ({ query, req }) {
        guard.admin(req)
        const beforeSeq = query.cursor === undefined ? undefined : Number(query.cursor)
        if (beforeSeq !== undefined && !Number.isSafeInteger(beforeSeq)) throw new StreamgateError('SG_ERR_VALIDATION', 'cursor: the `next` of a previous page', { field: 'query/cursor' })
        const { limit, cursor: _c, ...filter } = query
        const clean = Object.fromEntries(Object.entries(filter).filter(([, v]) => v !== undefined))
        const entries = await audit.list({ ...clean, ...(beforeSeq !== undefined ? { beforeSeq } : {}) }, limit + 1)
        const more = entries.length > limit
        const page = entries.slice(0, limit)
        return { status: 200, body: { entries: page, next: more ? String(page.at(-1)!.seq) : null } }
      }
    }),
    operation({
      method: 'get', path: '/audit/verify', operationId: 'verifyAudit', tag: 'audit',
      summary: 'Recompute the hash chain and report the first broken link (admin)',
      responses: { 200: { description: 'The verification', schema: verifySchema } },
      async handle ({ req }) {
        guard.admin(req)
        return { status: 200, body: await audit.verify() }
      }
    }),
    operation({
      method: 'post', path: '/auth/token', operationId: 'createToken', tag: 'auth',
      summary: 'Exchange the API key this request is authenticated with for a short-lived token',
      description: 'For browsers and scripts: send the token as Authorization: Bearer. It stops working when it expires or when the key is revoked.',
      responses: { 201: { description: 'A token', schema: z.object({ token: z.string(), tokenType: z.literal('Bearer'), expiresIn: z.number().int() }).meta({ id: 'Token' }), headers: { 'Cache-Control': 'no-store' } } },
      async handle ({ req }) {
        const u = userOf(req)
        if (u.via !== 'key' || u.keyId === null) return guard.deny(req, 'api/auth/token', 'tokens are issued for API keys only: authenticate with the key itself', 'api-key')
        const t = await deps.tokens.issue(u.principal.id, u.keyId)
        return { status: 201, body: { token: t.token, tokenType: 'Bearer', expiresIn: t.expiresIn }, headers: { 'Cache-Control': 'no-store' } }
      }
    })
  ]
}
