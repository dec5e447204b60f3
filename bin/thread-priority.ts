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
 * Whether this process may move a thread out of SCHED_IDLE again (to SCHED_OTHER at nice 0): Linux
 * asks for CAP_SYS_NICE or an RLIMIT_NICE of at least 20 (sched(7)). Without either a thread put in the
 * idle class stays there for good, so it is not put there.
 */
export function canLeaveIdle (): boolean {
  if (process.platform !== 'linux') return false
  try {
    const cap = /^CapEff:\s*([0-9a-f]+)/m.exec(fs.readFileSync('/proc/self/status', 'utf8'))
    // CAP_SYS_NICE is capability 23.
    if (cap !== null && ((BigInt('0x' + cap[1]) >> 23n) & 1n) === 1n) return true
    const limit = /^Max nice priority\s+(\S+)/m.exec(fs.readFileSync('/proc/self/limits', 'utf8'))
    return limit !== null && (limit[1] === 'unlimited' || Number(limit[1]) >= 20)
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
 * for it); threads it starts afterwards inherit it. False where that failed (no `chrt`, not Linux).
 * Only where canLeaveIdle(): see IdleGovernor.
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

/** Threads of this process in the idle class now. */
export function idleThreads (): Set<number> {
  const out = new Set<number>()
  for (const [tid, t] of threadScheduling()) if (t.policy === SCHED_IDLE) out.add(tid)
  return out
}

/** Moves threads of this process to SCHED_IDLE or back to SCHED_OTHER (`chrt`, run without blocking the event loop); threads that ended are passed over. */
async function setPolicy (tids: Iterable<number>, policy: '--idle' | '--other'): Promise<void> {
  await Promise.all([...tids].map((tid) => new Promise<void>((resolve, reject) => {
    execFile('chrt', [policy, '--pid', '0', String(tid)], { timeout: 5000 }, (err) => {
      if (err === null || !fs.existsSync(`/proc/self/task/${tid}`)) resolve()
      else reject(err)
    })
  })))
}

/**
 * Keeps a thread (and the threads it started) in the idle class only while it keeps up. An idle-class
 * thread gets next to no CPU on a machine busy to saturation; when its lag passes `maxLagMs`, the
 * gateway's event loop (at normal priority, so never starved itself) moves it to SCHED_OTHER until it
 * has caught up (lag under a quarter of `maxLagMs`, at least twice `maxLagMs` after the move), then back.
 */
export class IdleGovernor {
  private promoted = false
  private since = 0
  private changing = false
  private readonly timer: NodeJS.Timeout
  /** Times the threads were moved to normal priority. */
  promotions = 0

  constructor (private readonly tids: ReadonlySet<number>, private readonly maxLagMs: number,
    private readonly lagMs: () => number | null, private readonly log: { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void }) {
    this.timer = setInterval(() => this.check(), Math.max(10, Math.min(250, maxLagMs / 4))).unref()
  }

  /** `idle` or `normal`: where the threads are now. */
  get state (): 'idle' | 'normal' { return this.promoted ? 'normal' : 'idle' }

  private check (): void {
    if (this.changing) return
    const lag = this.lagMs()
    if (!this.promoted && (lag === null || lag > this.maxLagMs)) {
      this.log.info({ lagMs: lag, maxLagMs: this.maxLagMs }, 'the sink lags: its thread runs at normal priority until it catches up')
      void this.move(true)
    } else if (this.promoted && lag !== null && lag <= this.maxLagMs / 4 && performance.now() - this.since >= 2 * this.maxLagMs) {
      void this.move(false)
    }
  }

  /** Normal priority, for good (a shutdown drains the sink at it). */
  async stop (): Promise<void> {
    clearInterval(this.timer)
    while (this.changing) await new Promise((resolve) => setTimeout(resolve, 5))
    if (!this.promoted) await this.move(true)
  }

  private async move (up: boolean): Promise<void> {
    this.changing = true
    try {
      await setPolicy(this.tids, up ? '--other' : '--idle')
      this.promoted = up
      this.since = performance.now()
      if (up) this.promotions++
    } catch (err) {
      // Not tried again: the threads stay where they are.
      clearInterval(this.timer)
      this.log.warn({ err: (err as Error).message }, 'could not change the sink thread\'s scheduling; it stays as it is')
    } finally {
      this.changing = false
    }
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
