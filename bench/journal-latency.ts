// The journal alone at a fixed rate (`npx tsx bench/journal-latency.ts`): appends RATE records a
// second for SECONDS (10 per event-loop turn, as Aedes hands over a socket read's PUBLISHes), and
// prints append→written (when the live fan-out may go) and append→durable (the acknowledgement)
// percentiles, after a one-second warm-up. No broker, no clients: what the journal adds to a message's
// latency, without the generators' scheduling noise. ROOT=<checkout> times another checkout's journal
// (an A/B against an older commit from a `git worktree`). SYNC_INTERVAL_US sets the journal's
// syncIntervalUs (STREAMGATE_JOURNAL_SYNC_INTERVAL_US). The main thread spins between turns (so its
// CPU time says nothing); the other threads' CPU time a record is printed: the sync thread's, and
// V8's helpers (little: the collector's parallel tasks).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import type { Journal as JournalClass } from '../gateway/journal.js'

const RATE = Number(process.env.RATE ?? 20_000)
const SECONDS = Number(process.env.SECONDS ?? 8)
const PER_TURN = 10

function pct (a: number[], p: number): string {
  const s = [...a].sort((x, y) => x - y)
  return (s[Math.min(s.length - 1, Math.floor(p * s.length))] ?? NaN).toFixed(2)
}

/** CPU time (µs) of every thread of this process but the main one, from /proc (Linux). */
function threadsCpuUs (): number {
  const tick = 1e6 / 100 // USER_HZ
  let us = 0
  for (const tid of fs.readdirSync('/proc/self/task')) {
    if (Number(tid) === process.pid) continue
    try {
      const stat = fs.readFileSync(`/proc/self/task/${tid}/stat`, 'latin1')
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
      us += (Number(f[11]) + Number(f[12])) * tick
    } catch { /* the thread ended */ }
  }
  return us
}

async function main (): Promise<void> {
  const root = process.env.ROOT ?? path.join(import.meta.dirname, '..')
  const { Journal } = await import(path.join(root, 'gateway/journal.ts')) as { Journal: typeof JournalClass }
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-journal-latency-'))
  const syncIntervalUs = Number(process.env.SYNC_INTERVAL_US ?? 0)
  if (!Number.isFinite(syncIntervalUs) || syncIntervalUs < 0) throw new Error(`SYNC_INTERVAL_US=${process.env.SYNC_INTERVAL_US}: give microseconds (0 or more)`)
  const { journal } = await Journal.open({ dir, maxBytes: 8 * 1024 ** 3, segmentBytes: 64 * 1024 * 1024, syncIntervalUs })
  const payload = Buffer.from(JSON.stringify({ ts: Date.now(), temp: 21.5, hum: 40.25, pressure: 1013.25, site: 'site-1', pad: 'x'.repeat(20) }))
  // Each fdatasync's duration too (the journal's own, on its thread).
  const syncs: number[] = []
  const syncer = (journal as unknown as { syncer: { fdatasync: (fd: number, cb: (err: Error | null) => void) => void } }).syncer
  const fdatasync = syncer.fdatasync.bind(syncer)
  syncer.fdatasync = (fd, cb) => {
    const t0 = performance.now()
    fdatasync(fd, (err) => { syncs.push(performance.now() - t0); cb(err) })
  }
  const total = RATE * SECONDS
  const written: number[] = []
  const durable: number[] = []
  let sent = 0
  let acked = 0
  const start = performance.now()
  const cpu0 = threadsCpuUs()
  await new Promise<void>((resolve, reject) => {
    const tick = (): void => {
      const due = Math.min(total, Math.floor((performance.now() - start) / 1000 * RATE))
      for (let i = 0; i < PER_TURN && sent < due; i++) {
        const k = sent++
        const t0 = performance.now()
        const record = { arrivalUs: Date.now() * 1000, dataset: 'bench', version: 1, device: 'dev-' + (k % 100), principal: 'bench', payload }
        journal.append(record, (err) => {
          // (A callback that throws is caught and logged by the journal: reject instead.)
          if (err !== null) { reject(err); return }
          if (k >= RATE) durable.push(performance.now() - t0)
          if (++acked === total) resolve()
        }, () => { if (k >= RATE) written.push(performance.now() - t0) })
      }
      if (sent < total) setImmediate(tick)
    }
    tick()
  })
  const cpu = threadsCpuUs() - cpu0
  const secs = (performance.now() - start) / 1000
  process.stdout.write(`${RATE} appends/s for ${SECONDS} s (${root}, syncIntervalUs ${syncIntervalUs}): other threads' CPU ${(cpu / total).toFixed(1)} µs a record, ` +
    `${(syncs.length / secs).toFixed(0)} fdatasyncs/s; append→written ms p50 ${pct(written, 0.5)} p99 ${pct(written, 0.99)} p99.9 ${pct(written, 0.999)}; ` +
    `append→durable ms p50 ${pct(durable, 0.5)} p99 ${pct(durable, 0.99)} p99.9 ${pct(durable, 0.999)}; ` +
    `${syncs.length} fdatasyncs, ms p50 ${pct(syncs, 0.5)} p99 ${pct(syncs, 0.99)} max ${pct(syncs, 1)}\n`)
  await journal.close()
  fs.rmSync(dir, { recursive: true, force: true })
}

void main()
