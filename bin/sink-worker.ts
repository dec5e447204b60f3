// The sink thread: follows the gateway's journal from disk and stores what it reads (the embedded
// DuckDB store or QuestDB), so decoding, building batches and the store's client never cost the
// event loop that serves MQTT. Started by bin/sink-thread.ts; talks to it through bin/sink-rpc.ts.
import { EventEmitter } from 'node:events'
import { getHeapStatistics } from 'node:v8'
import { parentPort, workerData } from 'node:worker_threads'
import { createPgExecutor, QuestdbSink, RecordStore, RedisClaims, type SqlExecutor, type StoreRefusal } from '../bridges/index.js'
import {
  Catalog, type ConsumerJournal, type Dataset, JournalFollower, JournalReader, type QueryPlan, type RecordQuery, type Sink, SinkConsumer
} from '../gateway/index.js'
import type { SinkWorkerInit } from './sink-thread.js'
import { lowerThisThread, thisThreadId } from './thread-priority.js'
import { Rpc } from './sink-rpc.js'

/**
 * The gateway's journal seen from this thread: segments from the directory, the committed sequence
 * number and commit notifications through shared memory (no message per commit). The gateway wakes
 * this thread only while a consumer listens for commits (it is idle): the `waiting` flag says so.
 */
class FollowedJournal extends EventEmitter implements ConsumerJournal {
  private readonly follower: JournalFollower
  private readonly gen: Int32Array
  private readonly waiting: Int32Array
  private readonly seq: BigInt64Array
  private watching = false
  private closed = false

  constructor (dir: string, shared: SharedArrayBuffer) {
    super()
    this.follower = new JournalFollower(dir)
    this.gen = new Int32Array(shared, 0, 1)
    this.waiting = new Int32Array(shared, 4, 1)
    this.seq = new BigInt64Array(shared, 8, 1)
    this.on('newListener', (event: string) => {
      if (event !== 'commit' || this.closed) return
      // Set before the listener checks committedSeq: either the gateway sees the flag and wakes us,
      // or the listener sees the new sequence number (both sides use sequentially consistent atomics).
      Atomics.store(this.waiting, 0, 1)
      if (!this.watching) void this.watch(Atomics.load(this.gen, 0))
    })
  }

  get committedSeq (): number { return Number(Atomics.load(this.seq, 0)) }
  segmentsFrom (seq: number): ReturnType<JournalFollower['segmentsFrom']> { return this.follower.segmentsFrom(seq) }
  refresh (): Promise<void> { return this.follower.refresh() }
  reader (fromSeq: number): JournalReader { return new JournalReader(this, fromSeq) }
  // Retention is the gateway's: it acknowledges on the consumer's progress events.
  register (): void {}
  ack (): void {}
  unregister (): void {}

  /** Emits 'commit' each time the gateway bumps the generation counter, while anyone listens. */
  private async watch (seen: number): Promise<void> {
    this.watching = true
    // Started from 'newListener', which fires before the listener is added: wait at least once.
    do {
      const w = Atomics.waitAsync(this.gen, 0, seen, 1000)
      if (w.async) await w.value
      const now = Atomics.load(this.gen, 0)
      if (now !== seen) {
        seen = now
        this.emit('commit')
      }
    } while (!this.closed && this.listenerCount('commit') > 0)
    Atomics.store(this.waiting, 0, 0)
    this.watching = false
  }

  close (): void { this.closed = true }
}

async function main (): Promise<void> {
  const init = workerData as SinkWorkerInit
  const rpc = new Rpc(parentPort!)
  const log = {
    info: (obj: object, msg: string) => rpc.emit('log', { level: 'info', obj, msg }),
    warn: (obj: object, msg: string) => rpc.emit('log', { level: 'warn', obj, msg })
  }
  const catalog = new Catalog(init.limits)
  const journal = new FollowedJournal(init.journalDir, init.shared)
  let sink: Sink & { close: () => Promise<void> }
  let records: RecordQuery | null = null
  let store: RecordStore | null = null
  let sql: SqlExecutor | null = null
  if (init.sink.kind === 'embedded') {
    store = await RecordStore.open({ dataDir: init.sink.dataDir, memoryLimit: init.sink.memoryLimit, cacheLimit: init.sink.cacheLimit, queryConcurrency: init.sink.queryConcurrency, queryTimeoutMs: init.sink.queryTimeoutMs })
    sink = store
    records = store
  } else {
    const q = init.sink
    sql = createPgExecutor(q.pg, q.timeoutMs)
    sink = new QuestdbSink({
      ilp: q.ilp,
      sql,
      checkpoints: {
        getCheckpoint: (c) => rpc.call<number>('getCheckpoint', c),
        setCheckpoint: (c, s) => rpc.call<void>('setCheckpoint', c, s)
      },
      onRefused: (refusals: readonly StoreRefusal[]) => rpc.emit('refused', refusals),
      timeoutMs: q.timeoutMs,
      resetMs: q.resetMs,
      nodeId: q.nodeId,
      log
    })
  }
  // Several nodes: entries with a message id are stored only by the copy holding its claim.
  const claims = init.claims !== undefined ? new RedisClaims(init.claims.redisUrl, init.claims.ttlS) : null
  const consumer = new SinkConsumer(journal, sink, catalog, { ...init.consumer, log, ...(claims !== null ? { claims: { store: claims, nodeId: init.claims!.nodeId } } : {}) })

  // Status goes to the gateway on every stored batch, and every 250 ms when it changed otherwise
  // (failures, breaker transitions).
  let lastSent = ''
  const sendStatus = (): void => {
    const s = consumer.status()
    const text = JSON.stringify(s)
    if (text === lastSent) return
    lastSent = text
    rpc.emit('status', s)
  }
  // Memory of this thread and of the store, for /v1/status (sampled: DuckDB answers it with a query).
  const sampleMemory = async (): Promise<void> => {
    const h = getHeapStatistics()
    rpc.emit('memory', { heapUsed: h.used_heap_size, heapTotal: h.total_heap_size, store: await store?.memoryBytes().catch(() => null) ?? null })
  }
  const memoryTicker = setInterval(() => { void sampleMemory() }, 5000)
  consumer.on('progress', sendStatus)
  consumer.on('written', (w: { ms: number, rows: number }) => rpc.emit('written', w))
  consumer.on('failure', sendStatus)
  const ticker = setInterval(sendStatus, 250)

  const needRecords = (): RecordQuery => {
    if (records === null) throw new Error('this sink thread does not serve queries')
    return records
  }
  rpc.handle('checkpoint', () => sink.checkpoint())
  rpc.handle('prepareDataset', async (d: Dataset) => {
    await sink.prepareDataset(d)
    catalog.putVersion(d)
  })
  rpc.handle('dropDataset', async (d: Dataset) => {
    // Forgotten only once its tables are gone: a failed drop leaves the dataset as it was.
    await sink.dropDataset(d)
    catalog.delete(d.id)
  })
  rpc.handle('start', async () => {
    await journal.refresh()
    await consumer.start()
    sendStatus()
  })
  rpc.handle('pause', () => consumer.pause())
  rpc.handle('resume', () => consumer.resume())
  rpc.handle('query', (plan: QueryPlan, timeoutMs: number) => needRecords().query(plan, timeoutMs))
  rpc.handle('latest', (ds: Dataset, range: Parameters<RecordQuery['latest']>[1]) => needRecords().latest(ds, range))
  rpc.handle('stats', (ds: Dataset) => needRecords().stats(ds))
  rpc.handle('close', async () => {
    clearInterval(ticker)
    clearInterval(memoryTicker)
    await consumer.close()
    sendStatus()
    journal.close()
    await sink.close()
    await sql?.close()
    await claims?.close()
  })
  // Once started (a start at idle priority on a busy machine could take forever): from now on the
  // gateway moves this thread back to normal priority while the sink lags or a call waits (IdleGovernor).
  if (init.priority === 'idle') {
    if (lowerThisThread()) rpc.emit('idle', thisThreadId())
    else log.warn({}, 'the sink thread could not move to SCHED_IDLE (util-linux chrt missing?); it runs at normal priority')
  }
  rpc.emit('ready', null)
}

main().catch((err: unknown) => {
  // Surfaces as the Worker's 'error' event in the gateway.
  throw err
})
