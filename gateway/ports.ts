// The ports the gateway core needs from the outside. bridges/ implements them; bin/ wires them in.
import type { ApiKey, Grant, Principal } from './access.js'
import type { Dataset, Row } from './datasets.js'
import type { RejectReason } from './errors.js'
import type { QueryPlan, QueryResult } from './query.js'

export interface MetadataSnapshot {
  /** Current versions. */
  readonly datasets: readonly Dataset[]
  /** Every version of every dataset (the current ones included). */
  readonly datasetVersions: readonly Dataset[]
  readonly principals: readonly Principal[]
  readonly keys: readonly ApiKey[]
  readonly grants: readonly Grant[]
}

/** Datasets, principals, keys and grants. Every call is durable when its promise resolves. */
export interface MetadataStore {
  load (): Promise<MetadataSnapshot>
  /** Saves the dataset as its current version, and in its version history. */
  saveDataset (dataset: Dataset): Promise<void>
  deleteDataset (id: string): Promise<void>
  savePrincipal (principal: Principal): Promise<void>
  deletePrincipal (id: string): Promise<void>
  saveKey (key: ApiKey): Promise<void>
  /** Replaces all grants on one dataset. */
  saveGrants (dataset: string, grants: readonly Grant[]): Promise<void>
}

/** One journal entry's rows, ready for a sink. */
export interface SinkEntry {
  readonly seq: number
  readonly dataset: string
  readonly version: number
  readonly device: string
  /** The message as accepted (JSON: one record or an array). */
  readonly payload: Buffer
  /** The rows it holds, decoded with its schema version (none for payload-only sinks). */
  readonly rows: readonly Row[]
}

/** What the management side asks of every store of records when datasets come and go. */
export interface DatasetTables {
  /** Makes sure the table of this version of the dataset exists, with every column of its schema. */
  prepareDataset (dataset: Dataset): Promise<void>
  /** Drops the tables of every version up to `dataset.version`. */
  dropDataset (dataset: Dataset): Promise<void>
}

/**
 * A journal consumer's destination. `write` stores the rows and advances the checkpoint to `lastSeq`
 * atomically, or does neither (so a replay after a crash never writes a row twice).
 */
export interface Sink extends DatasetTables {
  readonly name: string
  /** Publishes payloads as received (AMQP): the consumer need not decode rows for it. */
  readonly payloadOnly?: boolean
  /** The breaker in front of the store, if it has one. */
  breaker? (): BreakerStatus
  checkpoint (): Promise<number>
  write (entries: readonly SinkEntry[], lastSeq: number): Promise<void>
}

export interface RecordQuery {
  /** Runs a validated query (see gateway/query.ts); at most plan.limit rows and the next cursor. */
  query (plan: QueryPlan, timeoutMs: number): Promise<QueryResult>
  /** Newest first, `ts` in [from, to). Times in epoch µs. */
  latest (dataset: Dataset, range: { from: number | null, to: number | null, limit: number }): Promise<Row[]>
  stats (dataset: Dataset): Promise<{ stored: number, lastRecordUs: number | null }>
}

export interface RejectEntry {
  readonly at: string
  readonly dataset: string | null
  readonly principal: string | null
  readonly device: string | null
  readonly topic: string | null
  readonly reason: RejectReason
  readonly detail: string
  readonly field: string | null
  /** The first bytes of the payload, for diagnosis (UTF-8 with replacement, at most 512 bytes). */
  readonly excerpt: string
}

export interface RejectCount { readonly dataset: string | null, readonly reason: string, readonly count: number }

export interface RejectStore {
  /** Appends entries and adds `counts` (which may include entries not kept in detail). */
  append (entries: readonly RejectEntry[], counts: readonly RejectCount[]): Promise<void>
  counts (): Promise<RejectCount[]>
  list (dataset: string, limit: number): Promise<RejectEntry[]>
}

/** A stored answer to a request carrying an Idempotency-Key. */
export interface IdempotentResponse {
  readonly requestHash: string
  readonly status: number
  readonly body: unknown
  readonly createdAt: string
}

export interface IdempotencyStore {
  getResponse (principal: string, key: string): Promise<IdempotentResponse | null>
  putResponse (principal: string, key: string, response: IdempotentResponse): Promise<void>
  /** Forgets responses older than `before` (ISO 8601). */
  expireResponses (before: string): Promise<void>
}

/** Where sinks that cannot store their checkpoint with their data (QuestDB over ILP) keep it. */
export interface CheckpointStore {
  getCheckpoint (consumer: string): Promise<number>
  setCheckpoint (consumer: string, seq: number): Promise<void>
}

/** A circuit breaker's state as operators see it. */
export interface BreakerStatus { readonly state: 'closed' | 'open' | 'half-open', readonly failures: number, readonly lastError: string | null }

/** A journal consumer as operators see it (GET /v1/status). */
export interface ConsumerStatus {
  readonly name: string
  /** Last sequence number stored. */
  readonly checkpoint: number
  readonly lag: number
  /** Age of the oldest entry not yet stored, in seconds (null when no longer known). */
  readonly lagSeconds: number | null
  readonly lastError: string | null
  readonly failures: number
  readonly skipped: number
  readonly breaker: BreakerStatus | null
}

/** A running journal consumer, in this thread or in the sink thread. */
export interface JournalConsumer {
  readonly name: string
  readonly lag: number
  status (): ConsumerStatus
  /** Resolves once everything up to `seq` is stored (or rejects after `timeoutMs`). */
  waitFor (seq: number, timeoutMs?: number): Promise<void>
  /** Stops reading after the batch in progress until resume(); the journal holds what arrives meanwhile. */
  pause (): Promise<void>
  resume (): void
  close (): Promise<void>
}
