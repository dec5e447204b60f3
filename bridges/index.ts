// Adapters to the outside world, each implementing gateway ports.
export { EmbeddedStore, type EmbeddedStoreOptions } from './embedded/store.js'
export { RecordStore, type RecordStoreOptions } from './embedded/records.js'
export { createPgExecutor, QuestdbQuery, type QuestdbQueryOptions } from './questdb/query.js'
export { QuestdbSink, senderConfig, type QuestdbSinkOptions, type SqlExecutor, type StoreRefusal } from './questdb/sink.js'
export { compileQuery, shapeRows, type Dialect } from './sql/compile.js'
export { AmqpBridge, AmqpSink, type AmqpOptions, type AmqpStatus } from './amqp/bridge.js'
export { rabbitAuthRouter, rabbitDecision, type Exchanges } from './amqp/auth.js'
