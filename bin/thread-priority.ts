// Background threads yield the CPU to the live path. On two vCPUs shared with its clients, the sink
// thread's batches (decoding, DuckDB's appender, a few µs of CPU a row) held the subscriber and the
// load generators off a CPU for milliseconds at a time: at 20k msg/s, after the floods, pub→sub p99
// 2.72-4.04 ms with the sink thread at normal priority against 1.79-2.53 in Linux's SCHED_IDLE class
// (two A/B pairs of 3 runs, 2026-11-30 13:45 UTC). An idle-class thread runs whenever a CPU would
// otherwise idle, and a waking normal thread takes the CPU from it at once; on a machine busy to
// saturation it gets next to nothing, so IdleGovernor moves it back to normal priority while it lags.
import { execFile, execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

const SCHED_IDLE = 5

/**
 * Whether a thread this process puts in SCHED_IDLE can be moved out again (to SCHED_OTHER, by `chrt`
 * run from here): Linux asks for CAP_SYS_NICE (in the thread's user namespace's owner, for a container)
 * or an RLIMIT_NICE of at least 20 (sched(7)). Tried rather than read from /proc: a child `chrt` moves
 * itself into the idle class and execs another that moves itself back. Without it a thread put in the
 * idle class would stay there for good, so none is put there.
 */
export function canLeaveIdle (): boolean {
  if (process.platform !== 'linux') return false
  try {
    execFileSync('chrt', ['--idle', '0', 'chrt', '--other', '0', 'true'], { stdio: 'ignore', timeout: 5000 })
    return true
  } catch {
    return false
  }
}

/** The calling thread's id (Linux), from /proc/thread-self ("<pid>/task/<tid>"); null elsewhere. */
export function thisThreadId (): number | null {
  try {
    return Number(path.basename(fs.readlinkSync('/proc/thread-self')))
  } catch {
    return null
  }
}

/**
 * Moves the calling thread (not its process) to SCHED_IDLE with util-linux's `chrt` (Node has no call
 * for it). Threads it starts afterwards would inherit it; DuckDB's are started from libuv's pool and
 * keep their priority. False where that failed (no `chrt`, not Linux). Only where canLeaveIdle(): see
 * IdleGovernor.
 */
export function lowerThisThread (): boolean {
  const tid = thisThreadId()
  if (tid === null) return false
  try {
    execFileSync('chrt', ['--idle', '--pid', '0', String(tid)], { stdio: 'ignore', timeout: 5000 })
    return true
  } catch {
    return false
  }
}

/** Threads of this process in the idle class now (tests, diagnostics). */
export function idleThreads (): Set<number> {
  const out = new Set<number>()
  for (const [tid, t] of threadScheduling()) if (t.policy === SCHED_IDLE) out.add(tid)
  return out
}

/** Moves a thread of this process to SCHED_IDLE or back to SCHED_OTHER (`chrt`, run without blocking the event loop); a thread that ended is passed over. */
function setPolicy (tid: number, policy: '--idle' | '--other'): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    execFile('chrt', [policy, '--pid', '0', String(tid)], { timeout: 5000 }, (err) => {
      if (err === null || !fs.existsSync(`/proc/self/task/${tid}`)) resolve()
      else reject(err)
    })
  })
}

/** After a `chrt` that failed, how long before the governor tries again. */
const RETRY_MS = 5000

/** What the governor watches: the age of the oldest record not stored (null: unknown, old), and how long the oldest call to the thread has waited (0: none). */
export interface Backlog { readonly lagMs: number | null, readonly callMs: number }

/** A call to the thread (a query, a dataset made) waiting longer than this moves it to normal priority. */
const CALL_WAIT_MS = 100

/**
 * Keeps a thread in the idle class only while it keeps up. An idle-class thread gets next to no CPU on
 * a machine busy to saturation; when its lag passes `maxLagMs`, or a call to it has waited more than
 * CALL_WAIT_MS, the gateway's event loop (at normal priority, so never starved itself) moves it to
 * SCHED_OTHER until it has caught up and answered (lag under a quarter of `maxLagMs`, no call waiting,
 * at least twice `maxLagMs` after the move), then back.
 */
export class IdleGovernor {
  private promoted = false
  private since = 0
  private changing: Promise<void> | null = null
  private retryAt = 0
  private stopped = false
  private readonly timer: NodeJS.Timeout
  /** Times the thread was moved to normal priority. */
  promotions = 0

  constructor (private readonly tid: number, private readonly maxLagMs: number,
    private readonly backlog: () => Backlog, private readonly log: { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void }) {
    this.timer = setInterval(() => this.check(), Math.max(10, Math.min(CALL_WAIT_MS, maxLagMs / 4))).unref()
  }

  /** `idle` or `normal`: where the thread is now. */
  get state (): 'idle' | 'normal' { return this.promoted ? 'normal' : 'idle' }

  private check (): void {
    if (this.changing !== null || this.stopped || performance.now() < this.retryAt) return
    const { lagMs, callMs } = this.backlog()
    if (!this.promoted && (lagMs === null || lagMs > this.maxLagMs || callMs > CALL_WAIT_MS)) {
      // Said once: on a machine busy to saturation it happens every few seconds.
      if (this.promotions === 0) this.log.info({ lagMs, callMs, maxLagMs: this.maxLagMs }, 'the sink lags: its thread runs at normal priority until it catches up (said once; it happens whenever the sink lags)')
      void this.move(true)
    } else if (this.promoted && lagMs !== null && lagMs <= this.maxLagMs / 4 && callMs === 0 && performance.now() - this.since >= 2 * this.maxLagMs) {
      void this.move(false)
    }
  }

  /** Normal priority from now on (a shutdown drains the sink at it; a thread that died needs nothing). */
  async stop (): Promise<void> {
    this.stopped = true
    clearInterval(this.timer)
    await this.changing
    if (!this.promoted) await this.move(true)
  }

  private move (up: boolean): Promise<void> {
    this.changing = setPolicy(this.tid, up ? '--other' : '--idle').then(() => {
      this.promoted = up
      this.since = performance.now()
      if (up) this.promotions++
    }, (err: Error) => {
      // Tried again after a while (a spawn can fail on a machine out of memory or processes).
      this.retryAt = performance.now() + RETRY_MS
      this.log.warn({ err: err.message, retryMs: RETRY_MS }, 'could not change the sink thread\'s scheduling')
    }).finally(() => { this.changing = null })
    return this.changing
  }
}

/**
 * Each thread of this process: its scheduling policy (5 is SCHED_IDLE) and nice value, from
 * /proc/self/task/<tid>/stat (fields 41 and 19), for tests and diagnostics.
 */
export function threadScheduling (): Map<number, { policy: number, nice: number }> {
  const out = new Map<number, { policy: number, nice: number }>()
  for (const tid of fs.readdirSync('/proc/self/task')) {
    try {
      const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'utf8')
      // Fields after the command name (which may hold spaces and parentheses) start at field 3.
      const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      out.set(Number(tid), { policy: Number(fields[41 - 3]), nice: Number(fields[19 - 3]) })
    } catch { /* the thread ended */ }
  }
  return out
}
