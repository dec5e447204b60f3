// The composition root: builds the stores, the gateway and the API from a config, starts them in
// order and stops them in reverse. `bin/streamgate.ts` runs it as a process; tests run it in-process.
import { randomBytes } from 'node:crypto'
import type { EventEmitter } from 'node:events'
import fs from 'node:fs/promises'
import http from 'node:http'
import https from 'node:https'
import type net from 'node:net'
import path from 'node:path'
import { pino, type Logger } from 'pino'
import { createApi, type RecoveryResult } from '../api/app.js'
import express from 'express'
import { AmqpBridge, AmqpSink, ClusterRegistry, createPgExecutor, EmbeddedStore, PgMetadataStore, QuestdbQuery, rabbitAuthRouter, readReplica, RedisRates, redisBrokerState, StreamReplica } from '../bridges/index.js'
import type { Config } from '../config/index.js'
import {
  AccessState, AuditLog, type BreakerStatus, Broker, Catalog, Journal, type JournalConsumer, type JournalRecord, listen, Management, type NodeInfo, Pipeline, RecentOrigins, type RecordQuery, Rejects, SinkConsumer, StreamgateError
} from '../gateway/index.js'
import { reloadSecureContexts, secureContextOptions } from '../gateway/tls.js'
import { SinkThread } from './sink-thread.js'
import { createTokens } from '../api/auth.js'
import { createMetrics } from '../api/metrics.js'

export interface Streamgate {
  readonly config: Config
  readonly addresses: { mqtt: net.AddressInfo, ws: net.AddressInfo, http: net.AddressInfo, mqtts: net.AddressInfo | null, wss: net.AddressInfo | null, https: net.AddressInfo | null, rabbitmqAuth: net.AddressInfo | null }
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
  /** Re-reads the TLS certificate, key and CA (SIGHUP) for new connections; open ones keep theirs. Throws on a bad file, changing nothing. */
  reloadTls (): void
}

/** Waits for `p` (errors ignored), for at most `ms`. */
async function within (p: Promise<unknown> | undefined, ms: number): Promise<void> {
  let timer: NodeJS.Timeout | undefined
  await Promise.race([p?.catch(() => undefined), new Promise((resolve) => { timer = setTimeout(resolve, ms) })])
  clearTimeout(timer)
}

/** This node's id when STREAMGATE_NODE_ID is not set: made once, kept beside the data (stable across restarts). */
async function nodeIdFile (file: string): Promise<string> {
  const made = `node-${randomBytes(4).toString('hex')}`
  await fs.writeFile(file, made + '\n', { flag: 'wx' }).catch(async (err: NodeJS.ErrnoException) => { if (err.code !== 'EEXIST') throw err })
  return (await fs.readFile(file, 'utf8')).trim()
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
    const nodeId = config.nodeId ?? await nodeIdFile(path.join(dataDir, 'node.id'))
    // Several nodes: metadata, the audit chain and Idempotency-Key answers shared in PostgreSQL.
    const shared = config.metadataUrl !== null ? await PgMetadataStore.open({ url: config.metadataUrl, nodeId, log }) : null
    if (shared !== null) cleanups.push(() => shared.close())
    const metadata = shared ?? store
    const catalog = new Catalog({ maxBatch: config.limits.maxBatch, maxString: config.limits.maxString })
    const access = new AccessState()
    const rejects = new Rejects(store, { maxPending: 10_000, flushMs: 250, onError: (err) => log.warn({ err: err.message }, 'rejects log write failed') })
    await rejects.init()
    cleanups.push(() => rejects.close())
    // Records are stored by the sink thread: in QuestDB when configured, else in the embedded store.
    const sinkThread = await SinkThread.start({
      journalDir: path.join(dataDir, 'journal'),
      sink: config.questdb !== null
        ? { kind: 'questdb', ilp: config.questdb.ilp, pg: config.questdb.pg, timeoutMs: config.questdb.timeoutMs, resetMs: config.questdb.resetMs, nodeId }
        : { kind: 'embedded', dataDir, memoryLimit: config.storeMemory, cacheLimit: config.storeCache, queryConcurrency: config.limits.queryConcurrency, queryTimeoutMs: config.limits.queryTimeoutMs },
      consumer: { maxEntries: 20_000, maxRows: config.sink.batch, lingerMs: config.sink.lingerMs },
      limits: { maxBatch: config.limits.maxBatch, maxString: config.limits.maxString },
      priority: config.sink.priority,
      idleMaxLagMs: config.sink.idleMaxLagMs,
      ...(config.redis !== null ? { claims: { redisUrl: config.redis.url, ttlS: config.dedupTtlS, nodeId } } : {}),
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
    const audit = await AuditLog.open(metadata, { onError: (err) => log.warn({ err: err.message }, 'audit log write failed; retrying') })
    cleanups.push(() => audit.close())
    // The journal opens after the metadata is loaded (its floor is the sink's checkpoint); these two read it when called.
    let journalRef: Journal | null = null
    const management = new Management({
      store: metadata, access, catalog, sinks: [sinkThread], rejects, audit, localTables: config.questdb === null,
      storedCount: async (ds) => (await query.stats(ds)).stored,
      queuedSeq: () => journalRef?.queuedSeq ?? 0,
      drained: (seq, timeoutMs) => sinkThread.waitFor(seq, timeoutMs)
    })
    // Listening before loading: a change made meanwhile is not missed (applied once settled, below).
    // A change that cannot be applied (PostgreSQL away for a moment) is not dropped: everything is
    // reloaded, again every few seconds until that works.
    let resyncTimer: NodeJS.Timeout | null = null
    const resync = (delayMs: number): void => {
      if (resyncTimer !== null) return
      resyncTimer = setTimeout(() => {
        resyncTimer = null
        management.resync().catch((err: Error) => {
          log.warn({ err: err.message }, 'reloading the shared metadata failed; retrying')
          resync(5000)
        })
      }, delayMs)
      resyncTimer.unref()
    }
    cleanups.push(async () => { if (resyncTimer !== null) clearTimeout(resyncTimer) })
    await shared?.watch(
      (c) => {
        management.remote(c).catch((err: Error) => {
          log.warn({ err: err.message, change: c }, 'applying a change from another node failed; reloading')
          resync(1000)
        })
      },
      () => resync(0))
    await management.load()
    const { generatedKey } = await management.bootstrapAdmin(config.adminKey)

    // The journal replicated to this node's RabbitMQ stream before anything is acknowledged.
    const replica = config.replication !== null
      ? new StreamReplica({ url: config.replication.url, nodeId, timeoutMs: config.replication.timeoutMs, maxAge: config.replication.maxAge, connectionName: `${config.amqp!.connectionName} journal`, heartbeatS: config.amqp!.heartbeatS, log })
      : null
    if (replica !== null) cleanups.push(() => replica.close())
    const { journal } = await Journal.open({
      dir: path.join(dataDir, 'journal'),
      maxBytes: config.journal.maxBytes,
      segmentBytes: config.journal.segmentBytes,
      syncIntervalUs: config.journal.syncIntervalUs,
      syncNice: config.journal.syncNice,
      preallocate: config.journal.preallocate,
      floorSeq: await sinkThread.checkpoint(),
      log,
      ...(replica !== null ? { replicate: replica.replicate, onUndo: replica.undone } : {})
    })
    cleanups.push(() => journal.close())
    journalRef = journal
    await management.settle(journal.queuedSeq)
    await sinkThread.follow(journal)
    // Each reports its stored batches ('written', with their duration) for the sink latency histogram.
    const consumers: (JournalConsumer & EventEmitter)[] = [sinkThread]

    // Message ids already in the journal (AMQP message_id, a dataset's messageId field, entries
    // recovered from a lost node): a message journaled just before a crash, whose acknowledgement never
    // left, comes again now and must not be stored twice.
    const origins = new RecentOrigins()
    for (const o of await journal.recentOrigins()) origins.add(o.principal, o.origin)
    const pipeline = new Pipeline(catalog, access, journal, rejects, { maxPayload: config.limits.maxPayload, fanout: config.fanout }, origins)
    // Arrival times stay increasing across a restart whose wall clock is behind the journal's, unless
    // the journal's lies more than a day ahead (its clock was wrong then; arrivals would stay pinned there).
    const aheadUs = journal.lastArrivalUs - Date.now() * 1000
    if (aheadUs > 0) {
      const followed = aheadUs <= 86_400e6
      if (followed) pipeline.clock.advanceTo(journal.lastArrivalUs)
      log.warn({ aheadSeconds: Math.round(aheadUs / 1e6), followed }, 'the journal\'s last arrival time is ahead of the wall clock (a clock set back, or wrong before)')
    }
    // RabbitMQ: inbound consumer, outbound journal consumer, and the auth backend's listener.
    let amqp: AmqpBridge | null = null
    let authServer: http.Server | null = null
    let authAddr: net.AddressInfo | null = null
    if (config.amqp !== null) {
      const a = config.amqp
      const opts = { url: a.url, exchanges: { ingest: a.ingestExchange, records: a.recordsExchange }, ingestQueue: a.ingestQueue, prefetch: a.prefetch, publishTimeoutMs: a.publishTimeoutMs, heartbeatS: a.heartbeatS, connectionName: a.connectionName, log }
      amqp = new AmqpBridge(opts, pipeline, origins)
      const bridge = amqp
      cleanups.push(() => bridge.close())
      // STREAMGATE_AMQP_OUTBOUND=none: RabbitMQ only brings records in (its checkpoint stays where it
      // was, so turning it on again publishes what was accepted meanwhile, as far as the journal holds it).
      if (a.outbound) {
        const amqpConsumer = new SinkConsumer(journal, new AmqpSink(amqp, opts, store, () => journal.committedSeq, nodeId), catalog, {
          maxEntries: 2000, maxRows: config.sink.batch, lingerMs: 0, retryMinMs: 200, retryMaxMs: 5000, log
        })
        await amqpConsumer.start()
        cleanups.push(() => amqpConsumer.close())
        consumers.push(amqpConsumer)
      }
      const authApp = express()
      authApp.disable('x-powered-by')
      authApp.use(rabbitAuthRouter(access, opts.exchanges, (path, params) => log.warn({ rabbitmq: path, username: params.username, name: params.name, routingKey: params.routing_key }, 'rabbitmq access denied')))
      authServer = http.createServer(authApp)
      authAddr = await listen(authServer, 'rabbitmq-auth', a.authPort, a.authBind, config.explicitPorts.has('rabbitmqAuth'), log)
      const srv = authServer
      cleanups.push(async () => { srv.closeAllConnections(); await new Promise<void>((resolve) => srv.close(() => resolve())) })
    }
    // Several nodes: MQTT sessions, subscriptions, retained messages and fan-out shared through Redis.
    const brokerState = config.redis !== null ? redisBrokerState(config.redis.url, log) : null
    if (brokerState !== null) cleanups.push(() => brokerState.close())
    // and connect, publish and API rates per principal (and address) counted across the nodes.
    const rates = config.redis !== null ? new RedisRates(config.redis.url) : null
    if (rates !== null) cleanups.push(() => rates.close())
    const broker = await Broker.create({ config, access, pipeline, management, log, ...(brokerState !== null ? { shared: brokerState } : {}), ...(rates !== null ? { rates } : {}) })
    cleanups.push(() => broker.close())
    const listeners = await broker.listen()

    const bridge = amqp
    const tokenSecret = config.api.tokenSecret !== null ? new TextEncoder().encode(config.api.tokenSecret) : await tokenSecretFile(path.join(dataDir, 'token.secret'))
    const breakers = (): Record<string, BreakerStatus | null> => ({
      ...Object.fromEntries(consumers.map((c) => [c.name, c.status().breaker])),
      ...(queryBreaker !== undefined ? { query: queryBreaker() } : {})
    })
    const metrics = createMetrics({ broker, pipeline, catalog, rejects, journal, consumers, breakers })
    for (const c of consumers) c.on('written', (w: { ms: number }) => metrics.sinkWriteDuration.observe({ sink: c.name }, w.ms / 1000))
    let listening = false
    // This node, as GET /v1/cluster shows it (with STREAMGATE_REDIS_URL, beside the other nodes).
    const startedAt = new Date().toISOString()
    let boundPorts: Record<string, number | null> = {}
    const self = (): Omit<NodeInfo, 'seenAt'> => ({
      id: nodeId,
      startedAt,
      addresses: boundPorts,
      sessions: broker.sessions().length,
      consumers: consumers.map((c) => { const st = c.status(); return { name: st.name, lag: st.lag, lagSeconds: st.lagSeconds, breaker: st.breaker?.state ?? null } })
    })
    let registry: ClusterRegistry | null = null
    /**
     * A node lost for good: its replicated journal (its RabbitMQ stream) appended to this node's
     * journal, each entry with origin `replica:<node>:<seq>`, so the sinks store it under the lost
     * node's identity (QuestDB: `_node`, `_seq`) and a second recovery recognises what the first did.
     */
    const recoverNode = async (id: string): Promise<RecoveryResult> => {
      if (id === nodeId) throw new StreamgateError('SG_ERR_CONFLICT', `${id} is this node`, { field: 'id' })
      if (registry !== null && (await registry.nodes()).some((n) => n.id === id)) throw new StreamgateError('SG_ERR_CONFLICT', `node ${id} is alive (GET /v1/cluster); stop it first`, { field: 'id' })
      const { entries, messages } = await readReplica(config.replication!.url, id, 0).catch((err: Error & { code?: number }) => {
        if (err.code === 404) throw new StreamgateError('SG_ERR_NOT_FOUND', `node ${id} has no replicated journal (no stream ${id})`, { field: 'id' })
        throw err
      })
      let recovered = 0
      let duplicates = 0
      let skipped = 0
      let batch: Promise<void>[] = []
      for (const e of entries) {
        if (catalog.version(e.dataset, e.version) === undefined) { skipped++; continue }
        // An entry the lost node had itself recovered keeps its first node's identity.
        const origin = e.origin?.startsWith('replica:') === true ? e.origin : `replica:${id}:${e.seq}`
        if (origins.begin(e.principal, origin) !== 'new') { duplicates++; continue }
        const record: JournalRecord = { origin, arrivalUs: e.arrivalUs, dataset: e.dataset, version: e.version, device: e.device, principal: e.principal, payload: e.payload }
        batch.push(new Promise<void>((resolve, reject) => journal.append(record, (err) => {
          if (err === null) { origins.commit(e.principal, origin); recovered++; resolve() } else { origins.abort(e.principal, origin); reject(err) }
        })))
        // A commit at a time keeps the journal's quota and memory in bounds on a long stream.
        if (batch.length >= 1000) { await Promise.all(batch); batch = [] }
      }
      await Promise.all(batch)
      log.info({ node: id, messages, entries: entries.length, recovered, duplicates, skipped }, 'recovered a lost node\'s replicated journal')
      return { node: id, messages, entries: entries.length, recovered, duplicates, skipped, lastSeq: entries.at(-1)?.seq ?? null }
    }
    const api = createApi({
      config, management, query, rejects, rejectStore: store, journal, consumers, broker, pipeline, idempotency: metadata, log, logger: log, audit, metrics,
      tokens: createTokens(access, config.api, tokenSecret),
      consoleConfig: () => ({ ws: { port: listeners.ws.port, path: '/mqtt' } }),
      ...(rates !== null ? { rates } : {}),
      ...(queryBreaker !== undefined ? { queryBreaker } : {}),
      ...(bridge !== null ? { amqpStatus: () => bridge.status() } : {}),
      ...(replica !== null ? { replicationStatus: () => replica.status(), recoverNode: (id: string) => recoverNode(id) } : {}),
      memory: () => ({ sinkThread: sinkThread.memory }),
      cluster: async () => registry !== null ? await registry.nodes() : [{ ...self(), seenAt: new Date().toISOString() }],
      readiness: () => {
        // Each sink's breaker is reported (`sink:<name>`: closed, open, half-open) but does not make the
        // node unready: the journal holds what a sink cannot take yet, and ingestion goes on.
        const sinks = Object.fromEntries(consumers.map((c) => [`sink:${c.name}`, c.status().breaker?.state ?? true]))
        const checks = { listeners: listening, journal: journal.healthy, sinkThread: sinkThread.alive }
        return { ready: Object.values(checks).every((v) => v), checks: { ...checks, ...sinks } }
      }
    })
    // Idempotency-Key answers are kept for 24 hours.
    const expiry = setInterval(() => {
      metadata.expireResponses(new Date(Date.now() - 24 * 3600_000).toISOString()).catch((err: Error) => log.warn({ err: err.message }, 'idempotency expiry failed'))
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

    // The API over TLS too, when TLS is configured (API keys authenticate there; no client certificates).
    let httpsServer: https.Server | null = null
    let httpsAddr: net.AddressInfo | null = null
    if (config.tls !== null) {
      const srv = https.createServer({ ...secureContextOptions(config.tls), noDelay: true, headersTimeout: config.limits.httpHeadersTimeoutMs, requestTimeout: config.limits.httpRequestTimeoutMs, connectionsCheckingInterval: 1000 }, api)
      httpsServer = srv
      httpsAddr = await listen(srv, 'https', config.ports.https, config.bind, config.explicitPorts.has('https'), log)
      cleanups.push(async () => {
        srv.closeAllConnections()
        await new Promise<void>((resolve) => srv.close(() => resolve()))
      })
    }
    const tlsServers = [...broker.tlsServers, ...(httpsServer !== null ? [httpsServer] : [])]
    const reloadTls = (): void => {
      if (config.tls === null) throw new Error('TLS is not configured (STREAMGATE_TLS_CERT, STREAMGATE_TLS_KEY)')
      reloadSecureContexts(config.tls, tlsServers)
      log.info({ cert: config.tls.cert, servers: tlsServers.length }, 'TLS certificates reloaded')
    }

    const addresses = { ...listeners, http: httpAddr, https: httpsAddr, rabbitmqAuth: authAddr }
    boundPorts = Object.fromEntries(Object.entries(addresses).map(([k, a]) => [k, a?.port ?? null]))
    if (config.redis !== null) {
      const r = new ClusterRegistry(config.redis.url, nodeId, self)
      cleanups.push(() => r.close())
      await r.start()
      registry = r
    }
    listening = true
    log.info({ mqtt: listeners.mqtt.port, ws: listeners.ws.port, http: httpAddr.port, mqtts: listeners.mqtts?.port, wss: listeners.wss?.port, https: httpsAddr?.port, bind: config.bind, dataDir }, 'streamgate listening')

    let closing: Promise<void> | null = null
    const close = (drainMs = config.limits.shutdownTimeoutMs): Promise<void> => {
      closing ??= (async () => {
        // Stop taking input first, then let the journal finish its commit, then let the sink catch up.
        listening = false // /readyz answers 503 from now on
        // No new connections, first (nothing below may hold that up); what the connected clients sent
        // up to now reaches the journal's commit and gets its PUBACK (for up to a second) before their
        // connections close.
        broker.stopAccepting()
        clearInterval(expiry)
        server.closeAllConnections()
        server.close()
        httpsServer?.closeAllConnections()
        httpsServer?.close()
        // Neither a stalled Redis nor a stalled RabbitMQ may hold up the rest (RabbitMQ redelivers
        // what this node had not acked).
        await within(registry?.close(), 2000)
        await within(amqp?.stopConsuming(), 2000)
        await journal.whenCommitted(journal.queuedSeq, 1000)
        await broker.flushWrites() // held acknowledgements leave
        await broker.close()
        await brokerState?.close()
        await rates?.close()
        await journal.close()
        await within(replica?.close(), 2000)
        // The sink thread drains at normal priority (STREAMGATE_SINK_PRIORITY=idle yields otherwise).
        await sinkThread.stopYielding()
        await Promise.all(consumers.map((c) => c.waitFor(journal.committedSeq, drainMs).catch((err: Error) => log.warn({ err: err.message }, 'sink not drained at shutdown; it resumes from its checkpoint'))))
        for (const c of consumers) await c.close()
        await within(amqp?.close(), 2000)
        if (authServer !== null) {
          authServer.closeAllConnections()
          authServer.close()
        }
        await querySql?.close().catch((err: Error) => log.warn({ err: err.message }, 'closing the QuestDB query pool failed'))
        await rejects.close()
        await audit.close()
        await shared?.close()
        await store.close()
      })()
      return closing
    }
    return { config, addresses, generatedAdminKey: generatedKey, store, records: query, journal, consumers, management, pipeline, broker, amqp, api, log, close, reloadTls }
  } catch (err) {
    await undo()
    throw err
  }
}
