// The shapes the API answers with, as zod schemas: the OpenAPI document describes responses with them
// and the contract test validates real answers against that document.
import { z } from 'zod'
import { actions, auditEntrySchema, datasetSchemaSchema, principalKinds } from '../gateway/index.js'

export const datasetSchema = z.object({
  id: z.string(),
  description: z.string(),
  schema: datasetSchemaSchema,
  version: z.number().int(),
  createdAt: z.string(),
  updatedAt: z.string()
}).meta({ id: 'Dataset' })

export const principalSchema = z.object({
  id: z.string(),
  kind: z.enum(principalKinds),
  description: z.string(),
  disabled: z.boolean(),
  createdAt: z.string(),
  updatedAt: z.string()
}).meta({ id: 'Principal' })

export const apiKeySchema = z.object({
  id: z.string(),
  principal: z.string(),
  description: z.string(),
  createdAt: z.string(),
  expiresAt: z.string().nullable(),
  revokedAt: z.string().nullable()
}).meta({ id: 'ApiKey' })

export const issuedKeySchema = apiKeySchema.extend({
  key: z.string().describe('the secret: shown in this answer only')
}).meta({ id: 'IssuedKey' })

export const grantSchemaOut = z.object({
  dataset: z.string(),
  principal: z.string(),
  actions: z.array(z.enum(actions)),
  devices: z.array(z.string()).optional()
}).meta({ id: 'Grant' })

export const clientSchema = z.object({
  clientId: z.string(),
  principal: z.string(),
  keyId: z.string().nullable(),
  address: z.string().nullable(),
  connectedAt: z.string()
}).meta({ id: 'Client' })

export const rejectSchema = z.object({
  at: z.string(),
  dataset: z.string().nullable(),
  principal: z.string().nullable(),
  device: z.string().nullable(),
  topic: z.string().nullable(),
  reason: z.string(),
  detail: z.string(),
  field: z.string().nullable(),
  excerpt: z.string()
}).meta({ id: 'Reject' })

const breaker = z.object({
  state: z.enum(['closed', 'open', 'half-open']),
  failures: z.number(),
  lastError: z.string().nullable(),
  transitions: z.object({ open: z.number().int(), 'half-open': z.number().int(), closed: z.number().int() }).meta({ description: 'State changes since the process started, by the state entered' })
}).meta({ id: 'Breaker' })

export const consumerStatusSchema = z.object({
  name: z.string(),
  checkpoint: z.number(),
  lag: z.number(),
  lagSeconds: z.number().nullable(),
  lastError: z.string().nullable(),
  failures: z.number(),
  skipped: z.number(),
  breaker: breaker.nullable()
}).meta({ id: 'ConsumerStatus' })

export const nodeSchema = z.object({
  id: z.string(),
  startedAt: z.string(),
  seenAt: z.string().describe('When the node last reported (every second); a node silent for 5 s is left out'),
  addresses: z.record(z.string(), z.number().nullable()).describe('Bound ports by listener'),
  sessions: z.number().describe('Its authenticated MQTT sessions'),
  consumers: z.array(z.object({ name: z.string(), lag: z.number(), lagSeconds: z.number().nullable(), breaker: z.string().nullable() }))
}).meta({ id: 'Node' })

export const recoverySchema = z.object({
  node: z.string(),
  messages: z.number().describe('commits read from the node\'s stream'),
  entries: z.number().describe('journal entries in them (the last copy of each sequence number)'),
  recovered: z.number().describe('entries appended to this node\'s journal'),
  duplicates: z.number().describe('entries this node had recovered before'),
  skipped: z.number().describe('entries of datasets or schema versions that no longer exist'),
  lastSeq: z.number().nullable().describe('the last sequence number of the lost node\'s journal in the stream')
}).meta({ id: 'Recovery' })

export const statusSchema = z.object({
  journal: z.object({
    committedSeq: z.number(), bytes: z.number(), healthy: z.boolean(), appended: z.number(), commits: z.number(), refusedFull: z.number(),
    recovery: z.object({
      truncatedBytes: z.number().describe('a torn tail cut off at the last start (never acknowledged)'),
      droppedSeqs: z.array(z.number()).describe('entries that failed their checksum at the last start (the first 1,000)')
    })
  }),
  consumers: z.array(consumerStatusSchema),
  query: z.object({ breaker }).optional(),
  amqp: z.record(z.string(), z.unknown()).optional(),
  replication: z.object({ stream: z.string(), replicated: z.number(), failures: z.number(), lastError: z.string().nullable(), connected: z.boolean() }).optional()
    .describe('the journal replicated to RabbitMQ (STREAMGATE_REPLICATION)'),
  mqtt: z.object({
    sessions: z.number(), connects: z.number(), authFailures: z.number(), protocolErrors: z.number(),
    throttled: z.number().describe('publishes delayed for a publisher over its rate'),
    rateLimitedDisconnects: z.number(), connectsRefusedRate: z.number(), connectionsRefusedAddress: z.number()
  }),
  rejected: z.record(z.string(), z.number()),
  memory: z.record(z.string(), z.unknown())
}).meta({ id: 'Status' })

export { auditEntrySchema }

/** A page of a list: `next` is the cursor for the following page (null on the last). */
export function pageOf<T extends z.ZodType> (name: string, item: T): z.ZodObject<{ [k: string]: z.ZodType }> {
  return z.object({ [name]: z.array(item), next: z.string().nullable() })
}

export const limitParam = z.coerce.number().int().min(1).max(1000).default(100).describe('most items in one page (1–1000)')
export const cursorParam = z.string().max(512).optional().describe('the `next` of the previous page')
