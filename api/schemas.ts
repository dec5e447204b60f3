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

const breaker = z.object({ state: z.enum(['closed', 'open', 'half-open']), failures: z.number(), lastError: z.string().nullable() }).meta({ id: 'Breaker' })

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
  mqtt: z.object({
    sessions: z.number(), connects: z.number(), authFailures: z.number(), protocolErrors: z.number(),
    throttled: z.number().describe('publishes delayed for a publisher over its rate'),
    rateLimitedDisconnects: z.number(), connectsRefusedRate: z.number()
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
