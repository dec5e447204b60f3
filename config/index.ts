// The one place that reads configuration. Parsed once at start with zod, frozen, passed down.
// Variable names are part of the public contract (README "Configuration").
import { readFileSync } from 'node:fs'
import os from 'node:os'
import { distance } from 'fastest-levenshtein'
import { parse as parseYaml } from 'yaml'
import { z } from 'zod'
import { NODE_ID } from '../gateway/topics.js'

const KiB = 1024
const MiB = 1024 * KiB
const GiB = 1024 * MiB

const port = z.coerce.number().int().min(0).max(65535)
/** A DuckDB memory size (decimal KB/MB/GB or binary KiB/MiB/GiB, as DuckDB reads them). */
const SIZE_UNITS: Record<string, number> = { kb: 1e3, mb: 1e6, gb: 1e9, kib: KiB, mib: MiB, gib: GiB }
const SIZE = /^(\d+(?:\.\d+)?)\s*(KB|MB|GB|KiB|MiB|GiB)$/i
const size = z.string().regex(SIZE, 'a size like 512MB or 1GiB')
/** STREAMGATE_STORE_CACHE: its default, or STREAMGATE_STORE_MEMORY when that is smaller; and its least. */
const STORE_CACHE = '64MB'
const MIN_STORE_CACHE = 16e6
function sizeBytes (v: string): number {
  const m = SIZE.exec(v)!
  return Number(m[1]) * SIZE_UNITS[m[2]!.toLowerCase()]!
}
const positiveInt = z.coerce.number().int().positive()
const nonNegativeInt = z.coerce.number().int().min(0)
const optionalPath = z.string().min(1).optional()

/** Every variable, its default and what it allows. Keys are the environment variable names. */
export const configSchema = z.object({
  STREAMGATE_BIND: z.string().min(1).default('0.0.0.0'),
  STREAMGATE_MQTT_PORT: port.default(1883),
  STREAMGATE_WS_PORT: port.default(8083),
  STREAMGATE_HTTP_PORT: port.default(8080),
  STREAMGATE_MQTTS_PORT: port.default(8883),
  STREAMGATE_WSS_PORT: port.default(8084),
  STREAMGATE_HTTPS_PORT: port.default(8443),
  STREAMGATE_TLS_CERT: optionalPath,
  STREAMGATE_TLS_KEY: optionalPath,
  STREAMGATE_TLS_CA: optionalPath,
  STREAMGATE_TLS_CLIENT_AUTH: z.enum(['none', 'optional', 'require']).default('none'),
  STREAMGATE_DATA_DIR: z.string().min(1).default('./data'),
  STREAMGATE_ADMIN_KEY: z.string().min(16, 'must be at least 16 characters').optional(),
  STREAMGATE_QUESTDB: z.string().min(1).optional().describe('@questdb/nodejs-client config string, e.g. http::addr=127.0.0.1:9000'),
  STREAMGATE_QUESTDB_PG: z.string().url().default('postgres://admin:quest@127.0.0.1:8812/qdb'),
  STREAMGATE_QUESTDB_TIMEOUT_MS: positiveInt.default(15_000),
  STREAMGATE_QUESTDB_RESET_MS: positiveInt.default(5_000),
  STREAMGATE_NODE_ID: z.string().regex(NODE_ID, '1 to 64 letters, digits, dots, dashes or underscores').optional(),
  STREAMGATE_REDIS_URL: z.string().regex(/^rediss?:\/\//, 'a redis:// or rediss:// URL').optional(),
  STREAMGATE_METADATA_URL: z.string().regex(/^postgres(ql)?:\/\//, 'a postgres:// or postgresql:// URL').optional(),
  STREAMGATE_DEDUP_TTL_S: positiveInt.default(86_400),
  STREAMGATE_AMQP_URL: z.string().regex(/^amqps?:\/\//, 'an amqp:// or amqps:// URL').optional(),
  STREAMGATE_AMQP_INGEST_EXCHANGE: z.string().min(1).max(255).default('streamgate.ingest'),
  STREAMGATE_AMQP_RECORDS_EXCHANGE: z.string().min(1).max(255).default('streamgate.records'),
  STREAMGATE_AMQP_INGEST_QUEUE: z.string().min(1).max(255).default('streamgate.ingest'),
  STREAMGATE_AMQP_PREFETCH: positiveInt.max(65535).default(200),
  STREAMGATE_AMQP_PUBLISH_TIMEOUT_MS: positiveInt.default(10_000),
  STREAMGATE_AMQP_OUTBOUND: z.enum(['records', 'none']).default('records'),
  STREAMGATE_AMQP_HEARTBEAT_S: positiveInt.max(65535).default(15),
  STREAMGATE_AMQP_CONNECTION_NAME: z.string().min(1).max(255).optional(),
  STREAMGATE_REPLICATION: z.enum(['none', 'rabbitmq-stream']).default('none'),
  STREAMGATE_REPLICATION_TIMEOUT_MS: positiveInt.default(5000),
  STREAMGATE_REPLICATION_MAX_AGE: z.string().regex(/^\d{1,6}[YMDhms]$/, 'a RabbitMQ x-max-age, e.g. 7D, 12h or 30m').default('7D'),
  STREAMGATE_RABBITMQ_AUTH_PORT: port.default(8089),
  STREAMGATE_RABBITMQ_AUTH_BIND: z.string().min(1).default('127.0.0.1'),
  STREAMGATE_LOG_LEVEL: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  // Limits. Every one is documented in the README.
  STREAMGATE_MAX_PAYLOAD: positiveInt.default(256 * KiB),
  STREAMGATE_MAX_BATCH: positiveInt.max(100_000).default(1000),
  STREAMGATE_MAX_TOPIC_LEVELS: z.coerce.number().int().min(3).max(100).default(16),
  STREAMGATE_MAX_STRING: positiveInt.default(4 * KiB),
  STREAMGATE_MAX_CLIENT_ID: positiveInt.max(65_535).default(256),
  STREAMGATE_DRAIN_TIMEOUT_MS: positiveInt.default(10_000),
  STREAMGATE_SHUTDOWN_TIMEOUT_MS: positiveInt.default(30_000),
  STREAMGATE_CONNECT_TIMEOUT_MS: positiveInt.default(30_000),
  STREAMGATE_JOURNAL_MAX_BYTES: positiveInt.default(2 * GiB),
  STREAMGATE_JOURNAL_SEGMENT_BYTES: positiveInt.min(64 * KiB).default(64 * MiB),
  STREAMGATE_JOURNAL_SYNC_INTERVAL_US: nonNegativeInt.max(1_000_000).default(1000),
  STREAMGATE_JOURNAL_SYNC_NICE: nonNegativeInt.max(19).default(0),
  STREAMGATE_JOURNAL_PREALLOCATE: z.enum(['true', 'false']).default('true'),
  STREAMGATE_FANOUT: z.enum(['written', 'durable']).optional(),
  STREAMGATE_SINK_BATCH: positiveInt.default(100_000),
  STREAMGATE_SINK_LINGER_MS: nonNegativeInt.max(10_000).default(200),
  STREAMGATE_SINK_PRIORITY: z.enum(['idle', 'normal']).default('idle'),
  STREAMGATE_SINK_IDLE_MAX_LAG_MS: positiveInt.max(600_000).default(1000),
  STREAMGATE_STORE_MEMORY: size.default('512MB'),
  STREAMGATE_STORE_CACHE: size.optional(),
  STREAMGATE_REJECTS_KEEP: positiveInt.default(10_000),
  STREAMGATE_HTTP_BODY_LIMIT: positiveInt.default(8 * MiB),
  STREAMGATE_HTTP_HEADERS_TIMEOUT_MS: positiveInt.default(10_000),
  STREAMGATE_HTTP_REQUEST_TIMEOUT_MS: positiveInt.default(60_000),
  STREAMGATE_HTTP_MAX_RECORDS: positiveInt.default(100_000),
  STREAMGATE_QUERY_MAX_ROWS: positiveInt.default(10_000),
  STREAMGATE_QUERY_TIMEOUT_MS: positiveInt.default(10_000),
  STREAMGATE_QUERY_CONCURRENCY: positiveInt.max(64).default(2),
  // The management API: tokens, CORS, rate limits.
  STREAMGATE_JWT_ISSUER: z.string().min(1).optional().describe('an external issuer whose JWTs authenticate API calls (iss claim)'),
  STREAMGATE_JWT_JWKS: z.string().url().optional().describe('that issuer\'s JWKS URL (RS256/ES256/EdDSA keys)'),
  STREAMGATE_JWT_SECRET: z.string().min(32, 'must be at least 32 characters').optional().describe('or a shared secret (HS256) for that issuer'),
  STREAMGATE_JWT_AUDIENCE: z.string().min(1).optional(),
  STREAMGATE_JWT_PRINCIPAL_CLAIM: z.string().min(1).default('sub'),
  STREAMGATE_TOKEN_TTL_S: positiveInt.max(86_400).default(900),
  STREAMGATE_TOKEN_SECRET: z.string().min(32, 'must be at least 32 characters').optional(),
  STREAMGATE_CORS_ORIGINS: z.string().default(''),
  STREAMGATE_API_RATE: nonNegativeInt.default(100),
  STREAMGATE_API_RATE_PER_ADDRESS: nonNegativeInt.default(200),
  STREAMGATE_API_RATE_DEVICE: nonNegativeInt.optional(),
  STREAMGATE_API_RATE_SERVICE: nonNegativeInt.optional(),
  STREAMGATE_API_RATE_ADMIN: nonNegativeInt.optional(),
  STREAMGATE_MQTT_CONNECT_RATE_DEVICE: nonNegativeInt.default(100),
  STREAMGATE_MQTT_CONNECT_RATE_SERVICE: nonNegativeInt.default(0),
  STREAMGATE_MQTT_CONNECT_RATE_ADMIN: nonNegativeInt.default(0),
  STREAMGATE_AUTH_FAILURES_PER_MINUTE: nonNegativeInt.default(60),
  STREAMGATE_API_AUTH_FAILURES_PER_MINUTE: nonNegativeInt.default(0),
  STREAMGATE_MQTT_MAX_CONNECTIONS_PER_ADDRESS: nonNegativeInt.default(0),
  STREAMGATE_MQTT_ACCEPT_RATE_PER_ADDRESS: nonNegativeInt.default(0),
  STREAMGATE_MQTT_PUBLISH_RATE_DEVICE: nonNegativeInt.default(10_000),
  STREAMGATE_MQTT_PUBLISH_RATE_SERVICE: nonNegativeInt.default(0),
  STREAMGATE_MQTT_PUBLISH_RATE_ADMIN: nonNegativeInt.default(0),
  STREAMGATE_MQTT_MAX_UNACKED: nonNegativeInt.default(100)
})

type Raw = z.infer<typeof configSchema>
export type PortName = 'mqtt' | 'ws' | 'http' | 'mqtts' | 'wss' | 'https' | 'rabbitmqAuth'

export interface Config {
  readonly bind: string
  readonly ports: { readonly mqtt: number, readonly ws: number, readonly http: number, readonly mqtts: number, readonly wss: number, readonly https: number }
  /** Ports given explicitly (a taken explicit port fails the start; a taken default one falls back). */
  readonly explicitPorts: ReadonlySet<PortName>
  /** TLS listeners (MQTTS, WSS, HTTPS) when set; `clientAuth` asks MQTT clients for certificates (CN = principal id). */
  readonly tls: { readonly cert: string, readonly key: string, readonly ca?: string, readonly clientAuth: 'none' | 'optional' | 'require' } | null
  readonly dataDir: string
  readonly adminKey: string | undefined
  /** Shared MQTT state for several nodes (sessions, subscriptions, queued QoS 1 messages, fan-out), when STREAMGATE_REDIS_URL is set. */
  readonly redis: { readonly url: string } | null
  /** Metadata shared by several nodes in PostgreSQL (datasets, principals, keys, grants, audit, Idempotency-Key answers), when STREAMGATE_METADATA_URL is set. */
  readonly metadataUrl: string | null
  /** How long a message id's claim is kept in Redis (several nodes): the window in which copies of one message on two nodes are stored once. */
  readonly dedupTtlS: number
  /** This node's name in GET /v1/cluster; null: one made at the first start, kept in the data directory. */
  readonly nodeId: string | null
  /** The RabbitMQ bridge, when STREAMGATE_AMQP_URL is set; its auth backend listens on `authPort`. */
  readonly amqp: {
    readonly url: string, readonly ingestExchange: string, readonly recordsExchange: string, readonly ingestQueue: string,
    readonly prefetch: number, readonly publishTimeoutMs: number, readonly heartbeatS: number, readonly connectionName: string, readonly authPort: number, readonly authBind: string,
    /** Publish every accepted record to the records exchange (true), or only ingest from RabbitMQ. */
    readonly outbound: boolean
  } | null
  /**
   * The journal replicated to a RabbitMQ stream per node before each acknowledgement
   * (STREAMGATE_REPLICATION=rabbitmq-stream, over STREAMGATE_AMQP_URL); null: the local journal alone.
   */
  readonly replication: { readonly url: string, readonly timeoutMs: number, readonly maxAge: string } | null
  /** QuestDB replaces the embedded store for time series when set. */
  readonly questdb: { readonly ilp: string, readonly pg: string, readonly timeoutMs: number, readonly resetMs: number } | null
  readonly logLevel: Raw['STREAMGATE_LOG_LEVEL']
  readonly limits: {
    readonly maxPayload: number
    readonly maxBatch: number
    readonly maxTopicLevels: number
    readonly maxString: number
    /** Longest MQTT client id accepted (CONNACK 2 beyond it). */
    readonly maxClientId: number
    readonly drainTimeoutMs: number
    /** On SIGTERM: how long the sinks may take to store what the journal holds before the process exits. */
    readonly shutdownTimeoutMs: number
    readonly connectTimeoutMs: number
    readonly httpBodyLimit: number
    /** Longest an HTTP client (API, MQTT over WebSocket) may take to send its headers, and its whole request (slowloris). */
    readonly httpHeadersTimeoutMs: number
    readonly httpRequestTimeoutMs: number
    readonly httpMaxRecords: number
    readonly queryMaxRows: number
    readonly queryTimeoutMs: number
    /** Queries the embedded store runs at once; more wait, within queryTimeoutMs. */
    readonly queryConcurrency: number
  }
  readonly journal: { readonly maxBytes: number, readonly segmentBytes: number, readonly syncIntervalUs: number, readonly syncNice: number, readonly preallocate: boolean }
  /** When live subscribers get a QoS 1/2 message: once journaled (written), or once fdatasync'd (durable, with its ack). */
  readonly fanout: 'written' | 'durable'
  /**
   * `priority`: the sink thread's CPU scheduling (`idle`: Linux SCHED_IDLE while it lags less than
   * `idleMaxLagMs`, bin/thread-priority.ts).
   */
  readonly sink: { readonly batch: number, readonly lingerMs: number, readonly priority: 'idle' | 'normal', readonly idleMaxLagMs: number }
  readonly api: {
    /** An external JWT issuer, verified by JWKS or a shared secret. */
    readonly jwt: { readonly issuer: string, readonly jwks: string | null, readonly secret: string | null, readonly audience: string | null, readonly principalClaim: string } | null
    readonly tokenTtlS: number
    /** Signs tokens from POST /v1/auth/token; null: generated once and kept in the data directory. */
    readonly tokenSecret: string | null
    /** Origins allowed by CORS; empty: CORS off. */
    readonly corsOrigins: readonly string[]
    /** Requests a second per principal and per source address (0: unlimited). */
    /** API requests a second per principal, by its kind. */
    readonly ratePerPrincipal: { readonly device: number, readonly service: number, readonly admin: number }
    /** Failed logins a minute from one address before its requests with credentials get 429 (0: off). */
    readonly authFailuresPerMinute: number
    readonly ratePerAddress: number
  }
  readonly mqttLimits: {
    /** CONNECTs a second per principal, by kind (0: unlimited). */
    readonly connectRate: { readonly device: number, readonly service: number, readonly admin: number }
    /** Failed MQTT logins a minute per source address before its CONNECTs are refused (0: unlimited). */
    readonly authFailuresPerMinute: number
    /** MQTT connections (TCP, TLS, WebSocket) open at once and accepted a second per source address (0: unlimited). */
    readonly maxConnectionsPerAddress: number
    readonly acceptRatePerAddress: number
    /** PUBLISHes a second per principal, by kind (0: unlimited). */
    readonly publishRate: { readonly device: number, readonly service: number, readonly admin: number }
    /** QoS 1 PUBLISHes of one client waiting for the disk beyond which its next packets are read only as they become durable. */
    readonly maxUnacked: number
  }
  /** DuckDB's memory limit for the embedded store, while queries run. */
  readonly storeMemory: string
  /** What the embedded records store keeps in memory while no query runs (DuckDB's memory limit then). */
  readonly storeCache: string
  readonly rejectsKeep: number
}

export class ConfigError extends Error {
  override name = 'ConfigError'
  constructor (message: string, readonly issues: readonly string[]) {
    super(message)
  }
}

export type Env = Readonly<Record<string, string | undefined>>

/**
 * STREAMGATE_* variables that are not settings: a misspelt variable would otherwise be ignored
 * silently (the start warns; the test suites' own variables pass through child gateways, so they are
 * not refused). Each comes with the closest setting's name when one is near.
 */
export function unknownVariables (env: Env): { name: string, suggestion: string | null }[] {
  const known = Object.keys(configSchema.shape)
  return Object.keys(env)
    .filter((k) => k.startsWith('STREAMGATE_') && k !== 'STREAMGATE_CONFIG' && !Object.hasOwn(configSchema.shape, k))
    .sort()
    .map((name) => {
      let suggestion: string | null = null
      let best = Math.max(2, Math.floor(name.length / 6)) + 1
      for (const k of known) {
        const d = distance(name, k)
        if (d < best) { best = d; suggestion = k }
      }
      return { name, suggestion }
    })
}

/**
 * Builds the config from the environment and, when `STREAMGATE_CONFIG` names one, a YAML (or JSON) file
 * whose keys are the same variable names (config/streamgate.yaml is the documented example). Variables win over the file. Throws ConfigError naming each bad variable.
 */
export function loadConfig (env: Env = process.env): Config {
  const fromFile = env.STREAMGATE_CONFIG ? readConfigFile(env.STREAMGATE_CONFIG) : {}
  // A misspelt key in the file would otherwise be ignored silently.
  const unknown = Object.keys(fromFile).filter((k) => !Object.hasOwn(configSchema.shape, k))
  if (unknown.length > 0) {
    const issues = unknown.map((k) => `${k}: not a streamgate setting (in ${env.STREAMGATE_CONFIG})`)
    throw new ConfigError(`invalid configuration:\n  ${issues.join('\n  ')}`, issues)
  }
  const merged: Record<string, unknown> = { ...fromFile }
  for (const key of Object.keys(configSchema.shape)) {
    const value = env[key]
    if (value !== undefined && value !== '') merged[key] = value
  }
  const parsed = configSchema.safeParse(merged)
  if (!parsed.success) {
    const issues = parsed.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`)
    throw new ConfigError(`invalid configuration:\n  ${issues.join('\n  ')}`, issues)
  }
  const r = parsed.data
  if (r.STREAMGATE_JWT_ISSUER !== undefined && (r.STREAMGATE_JWT_JWKS === undefined) === (r.STREAMGATE_JWT_SECRET === undefined)) {
    const issue = 'STREAMGATE_JWT_ISSUER: give exactly one of STREAMGATE_JWT_JWKS and STREAMGATE_JWT_SECRET'
    throw new ConfigError(`invalid configuration:\n  ${issue}`, [issue])
  }
  if (r.STREAMGATE_REPLICATION !== 'none' && r.STREAMGATE_AMQP_URL === undefined) {
    const issue = 'STREAMGATE_REPLICATION: rabbitmq-stream needs STREAMGATE_AMQP_URL (the RabbitMQ holding the streams)'
    throw new ConfigError(`invalid configuration:\n  ${issue}`, [issue])
  }
  if ((r.STREAMGATE_TLS_CERT === undefined) !== (r.STREAMGATE_TLS_KEY === undefined)) {
    const issue = 'STREAMGATE_TLS_CERT and STREAMGATE_TLS_KEY: set both or neither'
    throw new ConfigError(`invalid configuration:\n  ${issue}`, [issue])
  }
  if (r.STREAMGATE_TLS_CLIENT_AUTH !== 'none' && (r.STREAMGATE_TLS_CERT === undefined || r.STREAMGATE_TLS_CA === undefined)) {
    const issue = 'STREAMGATE_TLS_CLIENT_AUTH: needs STREAMGATE_TLS_CERT, STREAMGATE_TLS_KEY and STREAMGATE_TLS_CA (the CA that signs client certificates)'
    throw new ConfigError(`invalid configuration:\n  ${issue}`, [issue])
  }
  const cache = r.STREAMGATE_STORE_CACHE
  if (cache !== undefined && (sizeBytes(cache) > sizeBytes(r.STREAMGATE_STORE_MEMORY) || sizeBytes(cache) < MIN_STORE_CACHE)) {
    const issue = `STREAMGATE_STORE_CACHE (${cache}): at least 16MB (DuckDB needs it to write) and at most STREAMGATE_STORE_MEMORY (${r.STREAMGATE_STORE_MEMORY})`
    throw new ConfigError(`invalid configuration:\n  ${issue}`, [issue])
  }
  const explicit = new Set<PortName>()
  for (const [k, name] of [['STREAMGATE_MQTT_PORT', 'mqtt'], ['STREAMGATE_WS_PORT', 'ws'], ['STREAMGATE_HTTP_PORT', 'http'], ['STREAMGATE_MQTTS_PORT', 'mqtts'], ['STREAMGATE_WSS_PORT', 'wss'], ['STREAMGATE_HTTPS_PORT', 'https'], ['STREAMGATE_RABBITMQ_AUTH_PORT', 'rabbitmqAuth']] as const) {
    if (merged[k] !== undefined) explicit.add(name)
  }
  return deepFreeze(toConfig(r, explicit))
}

function toConfig (r: Raw, explicitPorts: ReadonlySet<PortName>): Config {
  return {
    explicitPorts,
    bind: r.STREAMGATE_BIND,
    ports: {
      mqtt: r.STREAMGATE_MQTT_PORT,
      ws: r.STREAMGATE_WS_PORT,
      http: r.STREAMGATE_HTTP_PORT,
      mqtts: r.STREAMGATE_MQTTS_PORT,
      wss: r.STREAMGATE_WSS_PORT,
      https: r.STREAMGATE_HTTPS_PORT
    },
    tls: r.STREAMGATE_TLS_CERT !== undefined && r.STREAMGATE_TLS_KEY !== undefined
      ? { cert: r.STREAMGATE_TLS_CERT, key: r.STREAMGATE_TLS_KEY, ...(r.STREAMGATE_TLS_CA !== undefined ? { ca: r.STREAMGATE_TLS_CA } : {}), clientAuth: r.STREAMGATE_TLS_CLIENT_AUTH }
      : null,
    dataDir: r.STREAMGATE_DATA_DIR,
    adminKey: r.STREAMGATE_ADMIN_KEY,
    redis: r.STREAMGATE_REDIS_URL === undefined ? null : { url: r.STREAMGATE_REDIS_URL },
    metadataUrl: r.STREAMGATE_METADATA_URL ?? null,
    dedupTtlS: r.STREAMGATE_DEDUP_TTL_S,
    nodeId: r.STREAMGATE_NODE_ID ?? null,
    amqp: r.STREAMGATE_AMQP_URL === undefined
      ? null
      : {
          url: r.STREAMGATE_AMQP_URL,
          ingestExchange: r.STREAMGATE_AMQP_INGEST_EXCHANGE,
          recordsExchange: r.STREAMGATE_AMQP_RECORDS_EXCHANGE,
          ingestQueue: r.STREAMGATE_AMQP_INGEST_QUEUE,
          prefetch: r.STREAMGATE_AMQP_PREFETCH,
          publishTimeoutMs: r.STREAMGATE_AMQP_PUBLISH_TIMEOUT_MS,
          heartbeatS: r.STREAMGATE_AMQP_HEARTBEAT_S,
          connectionName: r.STREAMGATE_AMQP_CONNECTION_NAME ?? `streamgate ${os.hostname()} ${process.pid}`,
          authPort: r.STREAMGATE_RABBITMQ_AUTH_PORT,
          authBind: r.STREAMGATE_RABBITMQ_AUTH_BIND,
          outbound: r.STREAMGATE_AMQP_OUTBOUND === 'records'
        },
    replication: r.STREAMGATE_REPLICATION === 'none' || r.STREAMGATE_AMQP_URL === undefined
      ? null
      : { url: r.STREAMGATE_AMQP_URL, timeoutMs: r.STREAMGATE_REPLICATION_TIMEOUT_MS, maxAge: r.STREAMGATE_REPLICATION_MAX_AGE },
    questdb: r.STREAMGATE_QUESTDB === undefined
      ? null
      : { ilp: r.STREAMGATE_QUESTDB, pg: r.STREAMGATE_QUESTDB_PG, timeoutMs: r.STREAMGATE_QUESTDB_TIMEOUT_MS, resetMs: r.STREAMGATE_QUESTDB_RESET_MS },
    logLevel: r.STREAMGATE_LOG_LEVEL,
    limits: {
      maxPayload: r.STREAMGATE_MAX_PAYLOAD,
      maxBatch: r.STREAMGATE_MAX_BATCH,
      maxTopicLevels: r.STREAMGATE_MAX_TOPIC_LEVELS,
      maxString: r.STREAMGATE_MAX_STRING,
      maxClientId: r.STREAMGATE_MAX_CLIENT_ID,
      drainTimeoutMs: r.STREAMGATE_DRAIN_TIMEOUT_MS,
      shutdownTimeoutMs: r.STREAMGATE_SHUTDOWN_TIMEOUT_MS,
      connectTimeoutMs: r.STREAMGATE_CONNECT_TIMEOUT_MS,
      httpBodyLimit: r.STREAMGATE_HTTP_BODY_LIMIT,
      httpHeadersTimeoutMs: r.STREAMGATE_HTTP_HEADERS_TIMEOUT_MS,
      httpRequestTimeoutMs: r.STREAMGATE_HTTP_REQUEST_TIMEOUT_MS,
      httpMaxRecords: r.STREAMGATE_HTTP_MAX_RECORDS,
      queryMaxRows: r.STREAMGATE_QUERY_MAX_ROWS,
      queryTimeoutMs: r.STREAMGATE_QUERY_TIMEOUT_MS,
      queryConcurrency: r.STREAMGATE_QUERY_CONCURRENCY
    },
    journal: {
      maxBytes: r.STREAMGATE_JOURNAL_MAX_BYTES,
      segmentBytes: r.STREAMGATE_JOURNAL_SEGMENT_BYTES,
      syncIntervalUs: r.STREAMGATE_JOURNAL_SYNC_INTERVAL_US,
      syncNice: r.STREAMGATE_JOURNAL_SYNC_NICE,
      preallocate: r.STREAMGATE_JOURNAL_PREALLOCATE === 'true'
    },
    // Replicated, a written commit may still be undone (the replica refused it): subscribers would see
    // messages that are then refused to their publishers, and sent again.
    fanout: r.STREAMGATE_FANOUT ?? (r.STREAMGATE_REPLICATION === 'none' ? 'written' : 'durable'),
    sink: { batch: r.STREAMGATE_SINK_BATCH, lingerMs: r.STREAMGATE_SINK_LINGER_MS, priority: r.STREAMGATE_SINK_PRIORITY, idleMaxLagMs: r.STREAMGATE_SINK_IDLE_MAX_LAG_MS },
    api: {
      jwt: r.STREAMGATE_JWT_ISSUER === undefined
        ? null
        : { issuer: r.STREAMGATE_JWT_ISSUER, jwks: r.STREAMGATE_JWT_JWKS ?? null, secret: r.STREAMGATE_JWT_SECRET ?? null, audience: r.STREAMGATE_JWT_AUDIENCE ?? null, principalClaim: r.STREAMGATE_JWT_PRINCIPAL_CLAIM },
      tokenTtlS: r.STREAMGATE_TOKEN_TTL_S,
      tokenSecret: r.STREAMGATE_TOKEN_SECRET ?? null,
      corsOrigins: r.STREAMGATE_CORS_ORIGINS.split(',').map((o) => o.trim()).filter((o) => o !== ''),
      ratePerPrincipal: { device: r.STREAMGATE_API_RATE_DEVICE ?? r.STREAMGATE_API_RATE, service: r.STREAMGATE_API_RATE_SERVICE ?? r.STREAMGATE_API_RATE, admin: r.STREAMGATE_API_RATE_ADMIN ?? r.STREAMGATE_API_RATE },
      ratePerAddress: r.STREAMGATE_API_RATE_PER_ADDRESS,
      authFailuresPerMinute: r.STREAMGATE_API_AUTH_FAILURES_PER_MINUTE
    },
    mqttLimits: {
      connectRate: { device: r.STREAMGATE_MQTT_CONNECT_RATE_DEVICE, service: r.STREAMGATE_MQTT_CONNECT_RATE_SERVICE, admin: r.STREAMGATE_MQTT_CONNECT_RATE_ADMIN },
      authFailuresPerMinute: r.STREAMGATE_AUTH_FAILURES_PER_MINUTE,
      maxConnectionsPerAddress: r.STREAMGATE_MQTT_MAX_CONNECTIONS_PER_ADDRESS,
      acceptRatePerAddress: r.STREAMGATE_MQTT_ACCEPT_RATE_PER_ADDRESS,
      publishRate: { device: r.STREAMGATE_MQTT_PUBLISH_RATE_DEVICE, service: r.STREAMGATE_MQTT_PUBLISH_RATE_SERVICE, admin: r.STREAMGATE_MQTT_PUBLISH_RATE_ADMIN },
      maxUnacked: r.STREAMGATE_MQTT_MAX_UNACKED
    },
    storeMemory: r.STREAMGATE_STORE_MEMORY,
    storeCache: r.STREAMGATE_STORE_CACHE ?? (sizeBytes(r.STREAMGATE_STORE_MEMORY) < sizeBytes(STORE_CACHE) ? r.STREAMGATE_STORE_MEMORY : STORE_CACHE),
    rejectsKeep: r.STREAMGATE_REJECTS_KEEP
  }
}

function readConfigFile (path: string): Record<string, unknown> {
  let text: string
  try {
    text = readFileSync(path, 'utf8')
  } catch (err) {
    throw new ConfigError(`STREAMGATE_CONFIG: cannot read ${path}: ${(err as Error).message}`, ['STREAMGATE_CONFIG'])
  }
  try {
    // YAML 1.2 (a JSON file is YAML too). Values keep their YAML types; the schema coerces them.
    const value: unknown = parseYaml(text) ?? {} // a file of comments only is empty
    if (typeof value !== 'object' || Array.isArray(value)) throw new Error('expected a mapping')
    // `KEY:` with no value is YAML null, and `KEY: ""` an empty string: the key is not set (its default
    // applies, as for an empty variable), never 0. Anything but a string, number or boolean is refused.
    const entries = Object.entries(value as Record<string, unknown>).filter(([, v]) => v !== null && v !== '')
    const odd = entries.filter(([, v]) => typeof v !== 'string' && typeof v !== 'number' && typeof v !== 'boolean').map(([k]) => k)
    if (odd.length > 0) throw new Error(`${odd.join(', ')}: give a single value (a string, number or boolean)`)
    // A boolean reads as a variable would ("true"/"false"): a number setting then refuses it.
    return Object.fromEntries(entries.map(([k, v]) => [k, typeof v === 'boolean' ? String(v) : v]))
  } catch (err) {
    throw new ConfigError(`STREAMGATE_CONFIG: ${path} is not a YAML or JSON mapping of STREAMGATE_* keys: ${(err as Error).message}`, ['STREAMGATE_CONFIG'])
  }
}

function deepFreeze<T> (value: T): T {
  if (value !== null && typeof value === 'object') {
    for (const v of Object.values(value)) deepFreeze(v)
    Object.freeze(value)
  }
  return value
}

