// A short check of the machine itself, run before any system under test starts, and printed with every
// result: these VMs drift (bare Aedes' p99 at 20k msg/s was 1.8 ms on one day and 30-140 ms on
// another, its CPU for the same load 43% against 80%), and a table is only read right next to how
// fast the machine was while it ran. The JSON work is a median of five tries (the slowest thread's,
// on every CPU at once); the timer and the fdatasync give p50 and p99.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { Worker } from 'node:worker_threads'
import { pct } from './common.js'

export interface MachineCheck {
  /** JSON.parse + JSON.stringify of 20,000 ~100-byte readings, ms (the gateway's kind of work). */
  jsMs: number
  /** The same on every CPU at once (one thread each), ms, the slowest thread: near jsMs when the vCPUs are the machine's own. */
  jsAllCpusMs: number
  /** How late a 1 ms timer fires, ms, p50 and p99 over 300 (scheduling delay on an idle machine). */
  timerLateMs: { p50: number, p99: number }
  /** A 2 KiB append + fdatasync in the temporary directory, ms, p50 and p99 over 200. */
  fdatasyncMs: { p50: number, p99: number }
}

// The work, as plain JavaScript (it also runs in worker threads): the median of 5 timed tries after 2.
const JS_WORK = `
const reading = JSON.stringify({ ts: 1764000000000, device: 'dev-0001', temp: 21.53, hum: 40.25, pressure: 1013.25, site: 'site-1' })
const tries = []
let sink = 0
for (let k = 0; k < 7; k++) {
  const t0 = performance.now()
  for (let i = 0; i < 20000; i++) sink += JSON.stringify(JSON.parse(reading)).length
  tries.push(performance.now() - t0)
}
const timed = tries.slice(2).sort((a, b) => a - b)
result = sink > 0 ? timed[Math.floor(timed.length / 2)] : NaN
`
const jsHere = (): number => (new Function(`let result; ${JS_WORK}; return result`) as () => number)()
const jsInThread = (): Promise<number> => new Promise((resolve, reject) => {
  const w = new Worker(`const { parentPort } = require('node:worker_threads'); let result; ${JS_WORK}; parentPort.postMessage(result)`, { eval: true })
  w.once('message', (ms: number) => resolve(ms))
  w.once('error', reject)
  // After the message the thread ends by itself; before it, an exit is a failure (resolve() then does nothing).
  w.once('exit', (code) => reject(new Error(`machine check: a worker thread exited with code ${code} before reporting`)))
})

export async function checkMachine (): Promise<MachineCheck> {
  const jsMs = jsHere()
  const jsAllCpusMs = Math.max(...await Promise.all(Array.from({ length: os.availableParallelism() }, jsInThread)))

  const late: number[] = []
  for (let i = 0; i < 300; i++) {
    const t0 = performance.now()
    await new Promise((resolve) => setTimeout(resolve, 1))
    late.push(performance.now() - t0 - 1)
  }

  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-bench-machine-'))
  const syncs: number[] = []
  try {
    const fd = fs.openSync(path.join(dir, 'f'), 'w')
    try {
      const buf = Buffer.alloc(2048, 1)
      for (let i = 0; i < 200; i++) {
        fs.writeSync(fd, buf, 0, buf.length, i * buf.length)
        const t0 = performance.now()
        fs.fdatasyncSync(fd)
        syncs.push(performance.now() - t0)
      }
    } finally {
      fs.closeSync(fd)
    }
  } finally {
    fs.rmSync(dir, { recursive: true, force: true })
  }
  const sorted = (a: number[]): number[] => [...a].sort((x, y) => x - y)
  const lateS = sorted(late)
  const syncS = sorted(syncs)
  return {
    jsMs,
    jsAllCpusMs,
    timerLateMs: { p50: pct(lateS, 0.5), p99: pct(lateS, 0.99) },
    fdatasyncMs: { p50: pct(syncS, 0.5), p99: pct(syncS, 0.99) }
  }
}

export const describeMachine = (m: MachineCheck): string =>
  `machine check before the run: 20,000 JSON readings parsed and stringified in ${m.jsMs.toFixed(1)} ms (${m.jsAllCpusMs.toFixed(1)} ms on every CPU at once), a 1 ms timer late by ${m.timerLateMs.p50.toFixed(2)} ms (p99 ${m.timerLateMs.p99.toFixed(2)}), ` +
  `fdatasync of a 2 KiB append ${m.fdatasyncMs.p50.toFixed(2)} ms (p99 ${m.fdatasyncMs.p99.toFixed(2)})`
