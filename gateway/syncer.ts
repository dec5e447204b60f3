// The journal's fdatasync runs on a thread of its own, not on libuv's threadpool. That pool (4
// threads by default) is the process's: DuckDB runs every query and statement of both stores on it
// (the sink thread's too), and so do zlib, DNS lookups and crypto. Measured here: an fdatasync took
// 5.8 s behind four long DuckDB queries and 1.3 ms behind two, so four slow queries on the embedded
// store held every acknowledgement for as long as they ran. A thread that only syncs cannot be queued
// behind anything.
import util from 'node:util'
import { Worker } from 'node:worker_threads'

// Slots of the shared Int32Array.
const REQUEST = 0 // generation of the latest request (the syncer thread waits on it)
const FD = 1 // the file to sync
const DONE = 2 // generation of the latest finished request (the event loop waits on it)
const ERRNO = 3 // 0, or the errno of the failed fdatasync
const STOP = 4

// Plain JavaScript evaluated in the thread: the same from source (tests) and from dist/.
const THREAD = `
const { workerData } = require('node:worker_threads')
const fs = require('node:fs')
const s = new Int32Array(workerData.shared)
// Its own nice value (setpriority on a thread id is that thread's alone on Linux): see SyncerOptions.
if (workerData.nice !== 0 && process.platform === 'linux') {
  // Only ever lower: a gateway started at a higher nice value keeps it.
  try {
    const os = require('node:os')
    const tid = Number(fs.readlinkSync('/proc/thread-self').split('/').pop())
    if (workerData.nice > os.getPriority(tid)) os.setPriority(tid, workerData.nice)
  } catch {}
}
let seen = 0
for (;;) {
  Atomics.wait(s, ${REQUEST}, seen)
  seen = Atomics.load(s, ${REQUEST})
  if (Atomics.load(s, ${STOP}) === 1) break
  let errno = 0
  try { fs.fdatasyncSync(Atomics.load(s, ${FD})) } catch (e) { errno = typeof e.errno === 'number' && e.errno !== 0 ? e.errno : -5 }
  Atomics.store(s, ${ERRNO}, errno)
  Atomics.store(s, ${DONE}, seen)
  Atomics.notify(s, ${DONE})
}
`

export type SyncCallback = (err: NodeJS.ErrnoException | null) => void

export interface SyncerOptions {
  /**
   * The sync thread's nice value on Linux (0–19; 0: the process's). Each fdatasync wakes it ~3 times
   * (the data's write, ext4's journal commit, the flush), ~1,000 fdatasyncs a second at 20k msg/s; a
   * higher nice value keeps those wake-ups from taking a CPU at once from the clients the gateway
   * shares the machine with, at a cost in acknowledgement latency (docs/architecture.md, Runtime).
   */
  readonly nice?: number
}

/** fdatasync on a dedicated thread, one call at a time (the journal keeps one commit in flight). */
export class Syncer {
  private readonly shared = new Int32Array(new SharedArrayBuffer(5 * Int32Array.BYTES_PER_ELEMENT))
  private readonly thread: Worker
  private readonly exited: Promise<void>
  private generation = 0
  private pending: SyncCallback | null = null
  private failure: Error | null = null
  private closed = false
  private closing: Promise<void> | null = null
  /** close() waiting for the sync in flight. */
  private settled: (() => void) | null = null

  constructor (opts: SyncerOptions = {}) {
    const nice = opts.nice ?? 0
    if (!Number.isInteger(nice) || nice < 0 || nice > 19) throw new RangeError(`Syncer: nice must be an integer from 0 to 19 (got ${nice})`)
    this.thread = new Worker(THREAD, { eval: true, workerData: { shared: this.shared.buffer, nice }, name: 'streamgate-journal-sync' })
    // Idle, the thread does not keep the process alive; a sync in flight does (ref() below).
    this.thread.unref()
    this.thread.on('error', (err) => this.die(err))
    this.exited = new Promise((resolve) => this.thread.once('exit', (code) => {
      if (!this.closed) this.die(new Error(`the journal's sync thread exited with code ${code}`))
      resolve()
    }))
  }

  fdatasync (fd: number, cb: SyncCallback): void {
    if (this.failure !== null || this.closed) {
      const err = this.failure ?? new Error('the journal sync thread is closed')
      queueMicrotask(() => cb(err))
      return
    }
    if (this.pending !== null) throw new Error('Syncer: one fdatasync at a time')
    this.pending = cb
    const gen = ++this.generation
    Atomics.store(this.shared, FD, fd)
    Atomics.store(this.shared, REQUEST, gen)
    Atomics.notify(this.shared, REQUEST)
    this.thread.ref()
    this.waitDone(gen, gen - 1)
  }

  /**
   * Waits until DONE reaches `gen`. A wake-up can be stale: the thread's notify of the previous sync
   * may land after this one's wait began (it stores DONE, then notifies). Then DONE is still behind
   * and the wait starts again, or the callback would never come and the journal would stop.
   */
  private waitDone (gen: number, seen: number): void {
    const w = Atomics.waitAsync(this.shared, DONE, seen)
    if (w.async) {
      void w.value.then(() => this.check(gen))
    } else {
      // Finished already: call back asynchronously all the same, as fs.fdatasync does.
      queueMicrotask(() => this.check(gen))
    }
  }

  private check (gen: number): void {
    if (this.pending === null) return // failed by die(): the thread is gone
    const done = Atomics.load(this.shared, DONE)
    if (done !== gen) {
      this.waitDone(gen, done)
      return
    }
    const cb = this.pending
    this.pending = null
    if (!this.closed) this.thread.unref()
    this.settled?.()
    const errno = Atomics.load(this.shared, ERRNO)
    cb(errno === 0 ? null : errnoError(errno))
  }

  private die (err: Error): void {
    this.failure = err
    const cb = this.pending
    this.pending = null
    this.settled?.()
    cb?.(err)
  }

  /** Stops the thread once the sync in flight (if any) returned. Idempotent. */
  close (): Promise<void> {
    this.closing ??= this.stop()
    return this.closing
  }

  private async stop (): Promise<void> {
    this.closed = true
    this.thread.ref()
    if (this.pending !== null) await new Promise<void>((resolve) => { this.settled = resolve })
    this.settled = null
    Atomics.store(this.shared, STOP, 1)
    Atomics.store(this.shared, REQUEST, ++this.generation)
    Atomics.notify(this.shared, REQUEST)
    await this.exited
  }
}

function errnoError (errno: number): NodeJS.ErrnoException {
  const code = util.getSystemErrorName(errno)
  return Object.assign(new Error(`${code}: fdatasync failed`), { errno, code, syscall: 'fdatasync' })
}
