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

/** A metadata change another node made to a shared store (its id only: the current state is read back). */
export type MetadataChange =
  | { readonly kind: 'dataset', readonly id: string }
  | { readonly kind: 'principal', readonly id: string }
  | { readonly kind: 'key', readonly id: string }
  | { readonly kind: 'grants', readonly id: string }

/**
 * A metadata store several gateway nodes share (PostgreSQL). Every save is announced to the other
 * nodes, which read the resource back and apply it. A dataset's `sinceSeq` is a position in one
 * node's journal, so it is kept per node: read back as -1 where this node has not set it yet.
 */
export interface SharedMetadataStore extends MetadataStore {
  readonly shared: true
  getDataset (id: string): Promise<{ current: Dataset, versions: Dataset[] } | null>
  getPrincipal (id: string): Promise<Principal | null>
  getKey (id: string): Promise<ApiKey | null>
  getGrants (dataset: string): Promise<Grant[]>
  /** Records this node's `sinceSeq` for the dataset (its current incarnation). */
  saveSince (dataset: Dataset): Promise<void>
  /**
   * Calls `onChange` for each change another node commits, and `onResync` whenever changes may have
   * been missed (the notification connection was lost and is back): the caller reloads everything.
   */
  watch (onChange: (c: MetadataChange) => void, onResync: () => void): Promise<void>
  close (): Promise<void>
}

export function isShared (store: MetadataStore): store is SharedMetadataStore {
  return (store as Partial<SharedMetadataStore>).shared === true
}

/**
 * Rates counted across every node (Redis): `take` uses `points` of the key's allowance of `perSecond`
 * in the current second, or refuses when fewer are left. A store that cannot answer falls back to a
 * count in this node's memory (each node then allows the full rate).
 */
export interface SharedRates {
  take (key: string, perSecond: number, points?: number): Promise<{ readonly ok: boolean, readonly remaining: number, readonly msBeforeNext: number }>
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
  /** The entry's origin id: an AMQP message_id, or `replica:<node>:<seq>` for an entry recovered from a lost node's replica. */
  readonly origin?: string | undefined
  /** Who published it (with `origin`, the message's identity). */
  readonly principal?: string | undefined
}

/**
 * Claims on message identities (principal, origin id) shared by every node (Redis): the records sink
 * stores an entry carrying an id only while its own copy holds the claim, so a message that reached
 * two nodes' journals (RabbitMQ redelivering to another node what the first had journaled before it
 * died) is stored once. `claim` answers, per entry, whether `owner` (node:seq) holds the claim, taking
 * it when nobody does.
 */
export interface OriginClaims {
  claim (entries: readonly { readonly principal: string, readonly origin: string, readonly owner: string }[]): Promise<boolean[]>
}

/** The node and journal position an entry recovered from a lost node's replica had there (its origin `replica:<node>:<seq>`). */
export function replicaIdentity (origin: string | undefined): { node: string, seq: number } | null {
  if (origin === undefined || !origin.startsWith('replica:')) return null
  const at = origin.lastIndexOf(':')
  const seq = Number(origin.slice(at + 1))
  return at > 8 && Number.isSafeInteger(seq) ? { node: origin.slice(8, at), seq } : null
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
export interface BreakerStatus {
  readonly state: 'closed' | 'open' | 'half-open'
  readonly failures: number
  readonly lastError: string | null
  /** State changes since the process started, by the state entered. */
  readonly transitions: { readonly open: number, readonly 'half-open': number, readonly closed: number }
}

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

/** A gateway node as GET /v1/cluster lists it. */
export interface NodeInfo {
  readonly id: string
  readonly startedAt: string
  /** When the node last wrote its entry (ISO 8601). */
  readonly seenAt: string
  readonly addresses: Readonly<Record<string, number | null>>
  readonly sessions: number
  readonly consumers: readonly { readonly name: string, readonly lag: number, readonly lagSeconds: number | null, readonly breaker: string | null }[]
}
