// Summarises a V8 .cpuprofile: self and total time by function (top N), for finding the hot path.
// Only the busy part of the profile counts: 250 ms windows in which the main thread was idle less
// than a fifth of the time (so start-up, set-up requests and pauses between runs do not dilute it).
// Usage: tsx bench/profile-summary.ts <file.cpuprofile> [N] [--all] [--window=FROM-TO] [--callers=NAME]
// --window=12-20: only the samples from 12 s to 20 s after the profile started (one run's steady state),
// idle included. --callers=writeBuffer: what called the functions whose label contains NAME, by share.
import fs from 'node:fs'

interface Node { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, children?: number[] }
const args = process.argv.slice(2)
const file = args.find((a) => !a.startsWith('--') && !/^\d+$/.test(a))
if (file === undefined) throw new Error('usage: profile-summary <file.cpuprofile> [N] [--all] [--window=FROM-TO] [--callers=NAME]')
const topN = Number(args.find((a) => /^\d+$/.test(a)) ?? 40)
const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as { nodes: Node[], samples: number[], timeDeltas: number[] }
const byId = new Map(prof.nodes.map((n) => [n.id, n]))
const parent = new Map<number, number>()
for (const n of prof.nodes) for (const c of n.children ?? []) parent.set(c, n.id)
const label = (n: Node): string => {
  const f = n.callFrame
  return `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*node_modules\//, 'nm/').replace(/^file:\/\/.*\/(dist|work\/main)\//, '')}:${f.lineNumber + 1}`
}

// Sample times, then the busy windows.
const WINDOW_US = 250_000
const times: number[] = []
let t = 0
for (const d of prof.timeDeltas) times.push(t += d)
const idleIn = new Map<number, [number, number]>()
prof.samples.forEach((id, i) => {
  const w = Math.floor(times[i]! / WINDOW_US)
  const c = idleIn.get(w) ?? [0, 0]
  c[1]++
  if (byId.get(id)!.callFrame.functionName === '(idle)') c[0]++
  idleIn.set(w, c)
})
const windowArg = args.find((a) => a.startsWith('--window='))?.slice('--window='.length).split('-').map(Number)
if (windowArg !== undefined && (windowArg.length !== 2 || !windowArg.every(Number.isFinite))) throw new Error('--window=FROM-TO: seconds, e.g. --window=12-20')
const busy = (i: number): boolean => {
  if (windowArg !== undefined) return times[i]! >= windowArg[0]! * 1e6 && times[i]! < windowArg[1]! * 1e6
  if (args.includes('--all')) return true
  const c = idleIn.get(Math.floor(times[i]! / WINDOW_US))!
  return c[0] / c[1] < 0.2
}

const self = new Map<string, number>()
const total = new Map<string, number>()
const callersOf = args.find((a) => a.startsWith('--callers='))?.slice('--callers='.length)
const callers = new Map<string, number>()
let counted = 0
prof.samples.forEach((id, i) => {
  if (!busy(i)) return
  counted++
  const n = byId.get(id)!
  if (callersOf !== undefined) {
    // The nearest frame above the first one matching NAME.
    for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
      if (!label(byId.get(cur)!).includes(callersOf)) continue
      const up = parent.get(cur)
      const l = up === undefined ? '(none)' : label(byId.get(up)!)
      callers.set(l, (callers.get(l) ?? 0) + 1)
      break
    }
  }
  self.set(label(n), (self.get(label(n)) ?? 0) + 1)
  const seen = new Set<string>()
  for (let cur: number | undefined = id; cur !== undefined; cur = parent.get(cur)) {
    const l = label(byId.get(cur)!)
    if (seen.has(l)) continue
    seen.add(l)
    total.set(l, (total.get(l) ?? 0) + 1)
  }
})
const busyMs = counted * (times.at(-1)! / prof.samples.length) / 1000
process.stdout.write(`${counted} samples ${windowArg !== undefined ? `from ${windowArg[0]} s to ${windowArg[1]} s` : 'in busy windows'} (~${busyMs.toFixed(0)} ms of ${(times.at(-1)! / 1000).toFixed(0)} ms)\n\nself time\n`)
const show = (m: Map<string, number>): void => {
  for (const [k, v] of [...m].sort((a, b) => b[1] - a[1]).slice(0, topN)) process.stdout.write(`${(v / counted * 100).toFixed(1).padStart(5)}%  ${k}\n`)
}
show(self)
process.stdout.write('\ntotal time (self + callees)\n')
show(total)
if (callersOf !== undefined) {
  process.stdout.write(`\ncallers of ${callersOf}\n`)
  show(callers)
}
