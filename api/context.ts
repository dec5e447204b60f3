// What route modules get: the gateway parts they act on and the authorization guard.
import type { Config } from '../config/index.js'
import type {
  BreakerStatus, Broker, IdempotencyStore, Journal, JournalConsumer, Management, NodeInfo, Pipeline, RecordQuery, Rejects, RejectStore
} from '../gateway/index.js'
import type { Guard, Tokens } from './auth.js'

/** What POST /v1/cluster/nodes/{id}/recover did. */
export interface RecoveryResult {
  readonly node: string
  /** Messages (commits) read from the node's stream, and the entries in them (the last copy of each). */
  readonly messages: number
  readonly entries: number
  /** Entries appended to this node's journal (stored and counted from here on). */
  readonly recovered: number
  /** Entries recovered before (by this node since its journal's last segments). */
  readonly duplicates: number
  /** Entries of datasets or schema versions this node does not know (deleted since). */
  readonly skipped: number
  readonly lastSeq: number | null
}

export interface ApiDeps {
  readonly config: Config
  readonly management: Management
  readonly query: RecordQuery
  readonly rejects: Rejects
  readonly rejectStore: RejectStore
  readonly journal: Journal
  readonly consumers: readonly JournalConsumer[]
  readonly broker: Broker
  readonly pipeline: Pipeline
  readonly idempotency: IdempotencyStore
  readonly tokens: Tokens
  readonly queryBreaker?: () => BreakerStatus
  readonly amqpStatus?: () => unknown
  readonly replicationStatus?: () => { stream: string, replicated: number, failures: number, lastError: string | null, connected: boolean }
  /** Memory of the parts that are not this thread's heap (the sink thread, its store). */
  readonly memory?: () => Record<string, unknown>
  /** The nodes of the cluster (this one alone without STREAMGATE_REDIS_URL). */
  readonly cluster: () => Promise<readonly NodeInfo[]>
  /** Stores what a lost node's replicated journal holds through this node (STREAMGATE_REPLICATION). */
  readonly recoverNode?: (node: string) => Promise<RecoveryResult>
  /** False until every listener is bound and the journal is replayed; with the reasons it is not ready. */
  readonly readiness: () => { ready: boolean, checks: Record<string, boolean | string> }
  readonly log: { error: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void, info: (obj: object, msg: string) => void }
}

export interface RouteContext {
  readonly deps: ApiDeps
  readonly management: Management
  readonly guard: Guard
}
