// The gateway core's public surface. Everything not named here is private to gateway/.
export { AuditLog, auditEntrySchema, auditHash, auditOutcomes, GENESIS, type AuditEntry, type AuditFilter, type AuditInput, type AuditStore, type VerifyReport } from './audit.js'
export { AccessState, actions, principalKinds, hashKey, type Action, type ApiKey, type AuthResult, type Grant, type Principal, type PrincipalKind } from './access.js'
export { Broker, DROP_TOPIC, sessionOf, type Listeners, type Session, type SessionInfo } from './broker.js'
export { SinkConsumer, type ConsumerJournal, type ConsumerOptions } from './consumer.js'
export { Catalog, CompiledSchema, publicDataset, tableName, type DatasetStats, datasetInputSchema, datasetSchemaSchema, fieldSpec, isoFromUs, parseTimestampUs, schemaColumns, type Dataset, type DatasetSchema, type FieldType, type Row } from './datasets.js'
export { errorCatalogue, isStreamgateError, PROBLEM_BASE, RecordRejection, RejectReason, StreamgateError, type ErrorCode } from './errors.js'
export { decodeEntries, Journal, JournalFollower, JournalFullError, JournalReader, MAX_ORIGIN, type JournalEntry, type JournalRecord, type JournalSource, type RecoveryReport } from './journal.js'
export { FailureWindow, Slots } from './limits.js'
export { listen } from './listen.js'
export {
  BOOTSTRAP_ADMIN, checkIfMatch, datasetUpdateSchema, etagOf, grantSchema, grantsInputSchema, incompatibilities, keyInputSchema, keyRotateSchema, Management, parse,
  principalInputSchema, principalUpdateSchema, publicKey, SYSTEM, type Actor, type ManagementDeps, type Page
} from './management.js'
export { ArrivalClock, Pipeline, type BatchResult, type RecordRefusal, type Refusal } from './pipeline.js'
export type { BreakerStatus, CheckpointStore, ConsumerStatus, DatasetTables, JournalConsumer, IdempotencyStore, IdempotentResponse, MetadataChange, MetadataSnapshot, MetadataStore, NodeInfo, SharedMetadataStore, SharedRates, OriginClaims, RecordQuery, RejectCount, RejectEntry, RejectStore, Sink, SinkEntry } from './ports.js'
export { Rejects } from './rejects.js'
export { RecentOrigins } from './origins.js'
export { classifyFilter, DATASET_ID, isDatasetId, isPrincipalId, NODE_ID, parsePublishTopic, PRINCIPAL_ID } from './topics.js'
export { aggregateFns, encodeCursor, planQuery, queryColumns, queryInputSchema, whereOps, type AggregateFn, type PlanAggregate, type PlanColumn, type PlanFilter, type QueryPlan, type QueryResult } from './query.js'
export { isShared, replicaIdentity } from './ports.js'
