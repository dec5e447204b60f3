// What route modules get: the gateway parts they act on and the authorization guard.
import type { Config } from '../config/index.js'
import type {
  BreakerStatus, Broker, IdempotencyStore, Journal, JournalConsumer, Management, Pipeline, RecordQuery, Rejects, RejectStore
} from '../gateway/index.js'
import type { Guard, Tokens } from './auth.js'

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
  /** Memory of the parts that are not this thread's heap (the sink thread, its store). */
  readonly memory?: () => Record<string, unknown>
  /** False until every listener is bound and the journal is replayed; with the reasons it is not ready. */
  readonly readiness: () => { ready: boolean, checks: Record<string, boolean | string> }
  readonly log: { error: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void, info: (obj: object, msg: string) => void }
}

export interface RouteContext {
  readonly deps: ApiDeps
  readonly management: Management
  readonly guard: Guard
}
