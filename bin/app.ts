// The composition root: builds the stores, the gateway and the API from a config, starts them in
// order and stops them in reverse. `bin/streamgate.ts` runs it as a process; tests run it in-process.
import { randomBytes } from 'node:crypto'
import fs from 'node:fs/promises'
import http from 'node:http'
import type net from 'node:net'
import path from 'node:path'
import { pino, type Logger } from 'pino'
import { createApi } from '../api/app.js'
import express from 'express'
import { AmqpBridge, AmqpSink, createPgExecutor, EmbeddedStore, QuestdbQuery, rabbitAuthRouter } from '../bridges/index.js'
import type { Config } from '../config/index.js'
import {
  AccessState, AuditLog, type BreakerStatus, Broker, Catalog, Journal, type JournalConsumer, listen, Management, Pipeline, type RecordQuery, Rejects, SinkConsumer
} from '../gateway/index.js'
import { SinkThread } from './sink-thread.js'
import { createTokens } from '../api/auth.js'
import { createMetrics } from '../api/metrics.js'

export interface Streamgate {
  readonly config: Config
  readonly addresses: { mqtt: net.AddressInfo, ws: net.AddressInfo, http: net.AddressInfo, mqtts: net.AddressInfo | null, wss: net.AddressInfo | null, rabbitmqAuth: net.AddressInfo | null }
  readonly amqp: AmqpBridge | null
  /** The admin key generated at a first start without STREAMGATE_ADMIN_KEY, else null. */
  readonly generatedAdminKey: string | null
  readonly store: EmbeddedStore
  /** Stored records: the embedded store (through the sink thread) or QuestDB. */
  readonly records: RecordQuery
  readonly journal: Journal
  /** The journal's consumers: the records sink first, then RabbitMQ's outbound when configured. */
  readonly consumers: readonly JournalConsumer[]
  readonly management: Management
  readonly pipeline: Pipeline
  readonly broker: Broker
  /** The management API's Express app (tests walk its routes). */
  readonly api: express.Express
  readonly log: Logger
  /** Stops listening, lets appends finish, drains the sinks for up to `drainMs`, closes everything. Idempotent. */
  close (drainMs?: number): Promise<void>
}

/** The secret that signs API tokens when STREAMGATE_TOKEN_SECRET is not set: made once, kept beside the data (mode 0600). */
async function tokenSecretFile (file: string): Promise<Uint8Array> {
  try {
    return await fs.readFile(file)
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err
  }
  const secret = randomBytes(32)
  await fs.writeFile(file, secret, { mode: 0o600, flag: 'wx' }).catch(async (err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err })
  return await fs.readFile(file)
}

export async function startStreamgate (config: Config, opts: { log?: Logger } = {}): Promise<Streamgate> {
  const log = opts.log ?? pino({ level: config.logLevel, base: { service: 'streamgate' } })
  const dataDir = path.resolve(config.dataDir)
  await fs.mkdir(dataDir, { recursive: true })

  const store = await EmbeddedStore.open({ dataDir, rejectsKeep: config.rejectsKeep, memoryLimit: config.storeMemory })
  const cleanups: (() => Promise<void>)[] = [() => store.close()]
  const undo = async (): Promise<void> => { for (const c of cleanups.reverse()) await c().catch(() => undefined) }
  try {
    const catalog = new Catalog({ maxBatch: config.limits.maxBatch, maxString: config.limits.maxString })
    const access = new AccessState()
    const rejects = new Rejects(store, { maxPending: 10_000, flushMs: 250, onError: (err) => log.warn({ err: err.message }, 'rejects log write failed') })
    await rejects.init()
    cleanups.push(() => rejects.close())
    // Records are stored by the sink thread: in QuestDB when configured, else in the embedded store.
    const sinkThread = await SinkThread.start({
      journalDir: path.join(dataDir, 'journal'),
      sink: config.questdb !== null
        ? { kind: 'questdb', ilp: config.questdb.ilp, pg: config.questdb.pg, timeoutMs: config.questdb.timeoutMs, resetMs: config.questdb.resetMs }
        : { kind: 'embedded', dataDir, memoryLimit: config.storeMemory },
      consumer: { maxEntries: 5000, maxRows: config.sink.batch, lingerMs: config.sink.lingerMs },
      limits: { maxBatch: config.limits.maxBatch, maxString: config.limits.maxString },
      log,
      checkpoints: store,
      onRefused: (refusals) => {
        for (const r of refusals) {
          rejects.record({ dataset: r.dataset, principal: null, device: r.device, topic: null, reason: r.reason, detail: r.detail, field: `/_seq/${r.seq}/${r.idx}`, payload: Buffer.from(JSON.stringify(r.row)) })
        }
      }
    })
    cleanups.push(() => sinkThread.close())
    let query: RecordQuery = sinkThread.records()
    let queryBreaker: (() => BreakerStatus) | undefined
    let querySql: { close: () => Promise<void> } | null = null
    if (config.questdb !== null) {
      const sql = createPgExecutor(config.questdb.pg, config.questdb.timeoutMs)
      querySql = sql
      cleanups.push(() => sql.close())
      const qquery = new QuestdbQuery(sql, { timeoutMs: config.questdb.timeoutMs, resetMs: config.questdb.resetMs })
      query = qquery
      queryBreaker = () => qquery.breaker()
    }
    const audit = await AuditLog.open(store, { onError: (err) => log.warn({ err: err.message }, 'audit log write failed; retrying') })
    cleanups.push(() => audit.close())
    // The journal opens after the metadata is loaded (its floor is the sink's checkpoint); these two read it when called.
    let journalRef: Journal | null = null
    const management = new Management({
      store, access, catalog, sinks: [sinkThread], rejects, audit,
      storedCount: async (ds) => (await query.stats(ds)).stored,
      queuedSeq: () => journalRef?.queuedSeq ?? 0,
      drained: (seq, timeoutMs) => sinkThread.waitFor(seq, timeoutMs)
    })
    await management.load()
    const { generatedKey } = await management.bootstrapAdmin(config.adminKey)

    const { journal } = await Journal.open({
      dir: path.join(dataDir, 'journal'),
      maxBytes: config.journal.maxBytes,
      segmentBytes: config.journal.segmentBytes,
      floorSeq: await sinkThread.checkpoint(),
      log
    })
    cleanups.push(() => journal.close())
    journalRef = journal
    await sinkThread.follow(journal)
    const consumers: JournalConsumer[] = [sinkThread]

    const pipeline = new Pipeline(catalog, access, journal, rejects, { maxPayload: config.limits.maxPayload })

    // RabbitMQ: inbound consumer, outbound journal consumer, and the auth backend's listener.
    let amqp: AmqpBridge | null = null
    let authServer: http.Server | null = null
    let authAddr: net.AddressInfo | null = null
    if (config.amqp !== null) {
      const a = config.amqp
      const opts = { url: a.url, exchanges: { ingest: a.ingestExchange, records: a.recordsExchange }, ingestQueue: a.ingestQueue, prefetch: a.prefetch, publishTimeoutMs: a.publishTimeoutMs, log }
      amqp = new AmqpBridge(opts, pipeline)
      const bridge = amqp
      cleanups.push(() => bridge.close())
      const amqpConsumer = new SinkConsumer(journal, new AmqpSink(amqp, opts, store, () => journal.committedSeq), catalog, {
        maxEntries: 2000, maxRows: config.sink.batch, lingerMs: 0, retryMinMs: 200, retryMaxMs: 5000, log
      })
      await amqpConsumer.start()
      cleanups.push(() => amqpConsumer.close())
      consumers.push(amqpConsumer)
      const authApp = express()
      authApp.disable('x-powered-by')
      authApp.use(rabbitAuthRouter(access, opts.exchanges, (path, params) => log.warn({ rabbitmq: path, username: params.username, name: params.name, routingKey: params.routing_key }, 'rabbitmq access denied')))
      authServer = http.createServer(authApp)
      authAddr = await listen(authServer, 'rabbitmq-auth', a.authPort, a.authBind, config.explicitPorts.has('rabbitmqAuth'), log)
      const srv = authServer
      cleanups.push(async () => { srv.closeAllConnections(); await new Promise<void>((resolve) => srv.close(() => resolve())) })
    }
    const broker = await Broker.create({ config, access, pipeline, management, log, acks: journal })
    cleanups.push(() => broker.close())
    const listeners = await broker.listen()

    const bridge = amqp
    const tokenSecret = config.api.tokenSecret !== null ? new TextEncoder().encode(config.api.tokenSecret) : await tokenSecretFile(path.join(dataDir, 'token.secret'))
    const breakers = (): Record<string, BreakerStatus | null> => ({
      ...Object.fromEntries(consumers.map((c) => [c.name, c.status().breaker])),
      ...(queryBreaker !== undefined ? { query: queryBreaker() } : {})
    })
    const metrics = createMetrics({ broker, pipeline, catalog, rejects, journal, consumers, breakers })
    sinkThread.on('written', (w: { ms: number }) => metrics.sinkWriteDuration.observe({ sink: sinkThread.name }, w.ms / 1000))
    let listening = false
    const api = createApi({
      config, management, query, rejects, rejectStore: store, journal, consumers, broker, pipeline, idempotency: store, log, logger: log, audit, metrics,
      tokens: createTokens(access, config.api, tokenSecret),
      ...(queryBreaker !== undefined ? { queryBreaker } : {}),
      ...(bridge !== null ? { amqpStatus: () => bridge.status() } : {}),
      memory: () => ({ sinkThread: sinkThread.memory }),
      readiness: () => {
        const checks = { listeners: listening, journal: journal.healthy, sinkThread: sinkThread.alive }
        return { ready: Object.values(checks).every((v) => v), checks }
      }
    })
    // Idempotency-Key answers are kept for 24 hours.
    const expiry = setInterval(() => {
      store.expireResponses(new Date(Date.now() - 24 * 3600_000).toISOString()).catch((err: Error) => log.warn({ err: err.message }, 'idempotency expiry failed'))
    }, 3600_000)
    expiry.unref()
    cleanups.push(async () => clearInterval(expiry))
    // Timeouts are checked every second (Node checks every 30 s by default), so a slowloris client is cut on time.
    const server = http.createServer({ noDelay: true, headersTimeout: config.limits.httpHeadersTimeoutMs, requestTimeout: config.limits.httpRequestTimeoutMs, connectionsCheckingInterval: 1000 }, api)
    const httpAddr = await listen(server, 'http', config.ports.http, config.bind, config.explicitPorts.has('http'), log)
    cleanups.push(async () => {
      server.closeAllConnections()
      await new Promise<void>((resolve) => server.close(() => resolve()))
    })

    const addresses = { ...listeners, http: httpAddr, rabbitmqAuth: authAddr }
    listening = true
    log.info({ mqtt: listeners.mqtt.port, ws: listeners.ws.port, http: httpAddr.port, mqtts: listeners.mqtts?.port, wss: listeners.wss?.port, bind: config.bind, dataDir }, 'streamgate listening')

    let closing: Promise<void> | null = null
    const close = (drainMs = 5000): Promise<void> => {
      closing ??= (async () => {
        // Stop taking input first, then let the journal finish its commit, then let the sink catch up.
        clearInterval(expiry)
        server.closeAllConnections()
        server.close()
        await amqp?.stopConsuming()
        await broker.close()
        await journal.close()
        await Promise.all(consumers.map((c) => c.waitFor(journal.committedSeq, drainMs).catch((err: Error) => log.warn({ err: err.message }, 'sink not drained at shutdown; it resumes from its checkpoint'))))
        for (const c of consumers) await c.close()
        await amqp?.close()
        if (authServer !== null) {
          authServer.closeAllConnections()
          authServer.close()
        }
        await querySql?.close().catch((err: Error) => log.warn({ err: err.message }, 'closing the QuestDB query pool failed'))
        await rejects.close()
        await audit.close()
        await store.close()
      })()
      return closing
    }
    return { config, addresses, generatedAdminKey: generatedKey, store, records: query, journal, consumers, management, pipeline, broker, amqp, api, log, close }
  } catch (err) {
    await undo()
    throw err
  }
}
