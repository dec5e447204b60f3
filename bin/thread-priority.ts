// Background threads yield the CPU to the live path. On two vCPUs shared with its clients, the sink
// thread's batches (decoding, DuckDB's appender, ~5 µs of CPU a row) held the subscriber and the load
// generators off a CPU for milliseconds at a time: at 20k msg/s pub→sub p99 3.5-3.9 ms with the sink
// thread at normal priority against 3.0-3.3 in Linux's SCHED_IDLE class (BENCHMARKS.md). An idle-class
// thread runs whenever a CPU would otherwise idle, and a waking normal thread takes the CPU from it at
// once; on a machine busy to saturation it gets next to nothing, and the store lags while the journal
// holds what it has not stored (/v1/status shows the lag).
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'

/** How the calling thread's scheduling ended up: `idle` (SCHED_IDLE), `nice` (nice 19, where `chrt` is missing), or `unchanged`. */
export type Lowered = 'idle' | 'nice' | 'unchanged'

/**
 * Moves the calling thread (not its process) to SCHED_IDLE with util-linux's `chrt` (Node has no
 * call for it), else to nice 19 (setpriority on a thread id affects that thread only, on Linux).
 * Threads it starts afterwards inherit it. Elsewhere than Linux it changes nothing.
 */
export function lowerThisThread (): Lowered {
  if (process.platform !== 'linux') return 'unchanged'
  let tid: number
  try {
    // "<pid>/task/<tid>": the thread reading it.
    tid = Number(path.basename(fs.readlinkSync('/proc/thread-self')))
  } catch {
    return 'unchanged'
  }
  try {
    execFileSync('chrt', ['--idle', '--pid', '0', String(tid)], { stdio: 'ignore', timeout: 5000 })
    return 'idle'
  } catch { /* no chrt (or not allowed): nice instead */ }
  try {
    os.setPriority(tid, 19)
    return 'nice'
  } catch {
    return 'unchanged'
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
