// The gateway's handle on its sink thread (bin/sink-worker.ts): starts it, tells it about datasets,
// wakes it on every journal commit through shared memory, acknowledges journal retention as it
// reports progress, and forwards queries to the embedded store it owns.
import { EventEmitter } from 'node:events'
import { Worker } from 'node:worker_threads'
import type {
  CheckpointStore, ConsumerStatus, Dataset, DatasetTables, Journal, JournalConsumer, QueryPlan, QueryResult, RecordQuery, Row
} from '../gateway/index.js'
import type { StoreRefusal } from '../bridges/index.js'
import { Rpc } from './sink-rpc.js'
import { canLeaveIdle, IdleGovernor } from './thread-priority.js'

export type SinkSpec =
  | { readonly kind: 'embedded', readonly dataDir: string, readonly memoryLimit: string, readonly cacheLimit: string, readonly queryConcurrency: number, readonly queryTimeoutMs: number }
  | { readonly kind: 'questdb', readonly ilp: string, readonly pg: string, readonly timeoutMs: number, readonly resetMs: number, readonly nodeId: string }

/** What the worker is started with (structured-cloned). */
export interface SinkWorkerInit {
  readonly journalDir: string
  /** i32 generation counter at 0, i32 `waiting` flag at 4 (the worker is idle), i64 committed sequence number at 8. */
  readonly shared: SharedArrayBuffer
  readonly sink: SinkSpec
  readonly consumer: { readonly maxEntries: number, readonly maxRows: number, readonly lingerMs: number }
  readonly limits: { readonly maxBatch: number, readonly maxString: number }
  /**
   * `idle`: the thread moves itself to SCHED_IDLE (bin/thread-priority.ts), and the gateway moves it
   * back to normal priority while it lags (only where canLeaveIdle()).
   */
  readonly priority: 'idle' | 'normal'
  /** Claims on message ids shared by the nodes (STREAMGATE_REDIS_URL): see OriginClaims. */
  readonly claims?: { readonly redisUrl: string, readonly ttlS: number, readonly nodeId: string }
}

export interface SinkThreadOptions extends Omit<SinkWorkerInit, 'shared'> {
  /** With priority `idle`: the lag (age of the oldest record not stored) past which the thread runs at normal priority until it catches up. */
  readonly idleMaxLagMs: number
  readonly log: { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void, error: (obj: object, msg: string) => void }
  /** Where a sink that cannot keep its checkpoint with its data (QuestDB) keeps it. */
  readonly checkpoints: CheckpointStore
  readonly onRefused: (refusals: readonly StoreRefusal[]) => void
}

/**
 * The sink thread's young generation, MB (V8's default is 48 on 64 bits). A batch lives as long as the
 * sink lingers (200 ms, ~4,000 rows at 20k msg/s), so with the default each scavenge copied most of it:
 * at 20k msg/s 123 scavenges (p50 6.7 ms) and 9 mark-compacts in a 12 s run, 944 ms in all, against 59
 * scavenges (p50 4.6 ms) and none, 395 ms, with 96 (`--trace-gc`, 2026-11-30 11:10 UTC). V8's helper
 * thread, at normal priority, does part of that work.
 */
const SINK_YOUNG_GENERATION_MB = 96

/** Runs the worker from dist/ as JavaScript, or from source (tests) through tsx's loader. */
const BOOT = `
const { workerData } = require('node:worker_threads')
;(async () => {
  if (workerData.tsx !== null) (await import(workerData.tsx)).register()
  await import(workerData.entry)
})()
`

/** The sink thread's heap and its store's memory (bytes), sampled every 5 s. */
export interface SinkThreadMemory { readonly heapUsed: number, readonly heapTotal: number, readonly store: number | null }

/** Emits 'written' ({ ms, rows }) for every batch the sink stored. */
export class SinkThread extends EventEmitter implements JournalConsumer, DatasetTables {
  readonly name: string
  memory: SinkThreadMemory | null = null
  private readonly gen: Int32Array
  private readonly waiting: Int32Array
  private readonly seq: BigInt64Array
  private journal: Journal | null = null
  private last: ConsumerStatus
  private dead: Error | null = null
  private closing: Promise<void> | null = null
  private readonly waiters = new Set<() => void>()
  /** With priority `idle`: moves the thread out of the idle class while it lags. */
  private governor: IdleGovernor | null = null

  private constructor (private readonly worker: Worker, private readonly rpc: Rpc, private readonly opts: SinkThreadOptions, shared: SharedArrayBuffer) {
    super()
    this.name = opts.sink.kind
    this.gen = new Int32Array(shared, 0, 1)
    this.waiting = new Int32Array(shared, 4, 1)
    this.seq = new BigInt64Array(shared, 8, 1)
    this.last = { name: this.name, checkpoint: 0, lag: 0, lagSeconds: 0, lastError: null, failures: 0, skipped: 0, breaker: null }
  }

  /** Starts the thread and opens its store; resolves when it is ready. */
  static async start (opts: SinkThreadOptions): Promise<SinkThread> {
    const self = import.meta.url
    const fromSource = self.endsWith('.ts')
    const entry = new URL(fromSource ? './sink-worker.ts' : './sink-worker.js', self).href
    const tsx = fromSource ? import.meta.resolve('tsx/esm/api') : null
    const { log, checkpoints, onRefused, idleMaxLagMs, ...init } = opts
    // Idle only where the threads can be moved back out of the idle class (see IdleGovernor).
    const idle = init.priority === 'idle' && canLeaveIdle()
    if (init.priority === 'idle' && !idle) log.info({}, 'the sink thread runs at normal priority: moving it out of the idle class again needs CAP_SYS_NICE or RLIMIT_NICE >= 20')
    const shared = new SharedArrayBuffer(16)
    const worker = new Worker(BOOT, { eval: true, workerData: { ...init, priority: idle ? 'idle' : 'normal', shared, entry, tsx }, resourceLimits: { maxYoungGenerationSizeMb: SINK_YOUNG_GENERATION_MB } })
    const rpc = new Rpc(worker)
    const thread = new SinkThread(worker, rpc, opts, shared)
    rpc.handle('getCheckpoint', (c: string) => checkpoints.getCheckpoint(c))
    rpc.handle('setCheckpoint', (c: string, s: number) => checkpoints.setCheckpoint(c, s))
    rpc.on('refused', onRefused)
    rpc.on<{ level: 'info' | 'warn', obj: object, msg: string }>('log', (l) => log[l.level]({ sink: thread.name, ...l.obj }, l.msg))
    rpc.on('status', (s: ConsumerStatus) => thread.onStatus(s))
    rpc.on('memory', (m: SinkThreadMemory) => { thread.memory = m })
    rpc.on('written', (w: { ms: number, rows: number }) => thread.emit('written', w))
    rpc.on('idle', (tid: number) => {
      thread.governor = new IdleGovernor(tid, idleMaxLagMs, () => {
        const s = thread.lagSeconds
        return { lagMs: s === null ? null : s * 1000, callMs: rpc.oldestCallMs() }
      }, log)
    })
    await new Promise<void>((resolve, reject) => {
      rpc.on('ready', () => resolve())
      worker.once('error', reject)
      worker.once('exit', (code) => reject(new Error(`sink thread exited with ${code} while starting`)))
    })
    worker.removeAllListeners('error')
    worker.removeAllListeners('exit')
    worker.on('error', (err) => thread.onDeath(err))
    worker.on('exit', (code) => { if (thread.closing === null) thread.onDeath(new Error(`sink thread exited with ${code}`)) })
    return thread
  }

  /** The sink's checkpoint (the journal opens past it when its own files are behind). */
  checkpoint (): Promise<number> {
    return this.rpc.call<number>('checkpoint')
  }

  /** Starts consuming `journal` from the sink's checkpoint. */
  async follow (journal: Journal): Promise<void> {
    this.journal = journal
    const checkpoint = await this.checkpoint()
    this.last = { ...this.last, checkpoint }
    journal.register(this.name, checkpoint)
    this.onCommit(journal.committedSeq)
    journal.on('commit', this.onCommit)
    await this.rpc.call('start')
  }

  private readonly onCommit = (seq: number): void => {
    Atomics.store(this.seq, 0, BigInt(seq))
    Atomics.add(this.gen, 0, 1)
    // Waking a thread costs a futex call and a task on its loop: only when it waits for commits.
    if (Atomics.load(this.waiting, 0) === 1) Atomics.notify(this.gen, 0)
  }

  private onStatus (s: ConsumerStatus): void {
    this.last = s
    this.journal?.ack(this.name, s.checkpoint)
    for (const w of this.waiters) w()
  }

  private onDeath (err: Error): void {
    this.dead = err
    void this.governor?.stop()
    this.opts.log.error({ sink: this.name, err: err.message }, 'sink thread died; the journal keeps every record until the gateway restarts')
    this.last = { ...this.last, lastError: `sink thread died: ${err.message}` }
    this.rpc.fail(err)
    for (const w of this.waiters) w()
  }

  /** False once the thread died (the gateway then needs a restart to store again). */
  get alive (): boolean { return this.dead === null }

  get lag (): number {
    return Math.max(0, (this.journal?.committedSeq ?? 0) - this.last.checkpoint)
  }

  /** Age of the oldest record not stored yet, in seconds (0: none; null when its commit is no longer remembered). */
  get lagSeconds (): number | null {
    if (this.lag === 0) return 0
    const at = this.journal?.arrivalOf(this.last.checkpoint + 1) ?? null
    return at === null ? null : Math.max(0, (Date.now() * 1000 - at) / 1e6)
  }

  status (): ConsumerStatus {
    return { ...this.last, lag: this.lag, lagSeconds: this.lagSeconds }
  }

  prepareDataset (dataset: Dataset): Promise<void> {
    return this.rpc.call('prepareDataset', dataset)
  }

  dropDataset (dataset: Dataset): Promise<void> {
    return this.rpc.call('dropDataset', dataset)
  }

  /** Queries served by the embedded store this thread owns. */
  records (): RecordQuery {
    return {
      query: (plan: QueryPlan, timeoutMs: number) => this.rpc.call<QueryResult>('query', plan, timeoutMs),
      latest: (ds: Dataset, range: { from: number | null, to: number | null, limit: number }) => this.rpc.call<Row[]>('latest', ds, range),
      stats: (ds: Dataset) => this.rpc.call<{ stored: number, lastRecordUs: number | null }>('stats', ds)
    }
  }

  async waitFor (seq: number, timeoutMs = 30_000): Promise<void> {
    if (this.last.checkpoint >= seq) return
    await new Promise<void>((resolve, reject) => {
      const check = (): void => {
        if (this.last.checkpoint >= seq) done(null)
        else if (this.dead !== null) done(this.dead)
        else if (this.closing !== null) done(new Error(`${this.name}: closed at checkpoint ${this.last.checkpoint}`))
      }
      const timer = setTimeout(() => done(new Error(`${this.name}: checkpoint ${this.last.checkpoint} did not reach ${seq} in ${timeoutMs} ms`)), timeoutMs)
      const done = (err: Error | null): void => {
        clearTimeout(timer)
        this.waiters.delete(check)
        if (err === null) resolve()
        else reject(err)
      }
      this.waiters.add(check)
      check()
    })
  }

  pause (): Promise<void> {
    return this.rpc.call('pause')
  }

  resume (): void {
    this.rpc.call('resume').catch((err: Error) => this.opts.log.warn({ sink: this.name, err: err.message }, 'resuming the sink thread failed'))
  }

  /** Where the thread runs: `idle` (the idle class) or `normal`. */
  get priority (): 'idle' | 'normal' {
    return this.governor?.state ?? 'normal'
  }

  /** Normal priority from now on: a shutdown drains the sink at it. */
  async stopYielding (): Promise<void> {
    await this.governor?.stop()
  }

  /** Stops after the batch in progress, closes the store and ends the thread. Idempotent. */
  close (): Promise<void> {
    this.closing ??= (async () => {
      this.journal?.off('commit', this.onCommit)
      await this.stopYielding()
      if (this.dead === null) await this.rpc.call('close').catch((err: Error) => this.opts.log.warn({ sink: this.name, err: err.message }, 'closing the sink thread failed'))
      for (const w of this.waiters) w()
      this.journal?.unregister(this.name)
      this.rpc.close()
      await this.worker.terminate()
    })()
    return this.closing
  }
}
