// Summarises a V8 .cpuprofile: self time by function (top N), for finding the hot path.
// Usage: tsx bench/profile-summary.ts <file.cpuprofile> [N]
import fs from 'node:fs'

interface Node { id: number, callFrame: { functionName: string, url: string, lineNumber: number }, hitCount?: number, children?: number[] }
const file = process.argv[2]
if (file === undefined) throw new Error('usage: profile-summary <file.cpuprofile> [N]')
const prof = JSON.parse(fs.readFileSync(file, 'utf8')) as { nodes: Node[], samples: number[], timeDeltas: number[] }
const self = new Map<string, number>()
const byId = new Map(prof.nodes.map((n) => [n.id, n]))
const total = prof.samples.length
for (const id of prof.samples) {
  const n = byId.get(id)!
  const f = n.callFrame
  const key = `${f.functionName || '(anonymous)'} ${f.url.replace(/^.*node_modules\//, 'nm/').replace(/^file:\/\/.*\/dist\//, '')}:${f.lineNumber + 1}`
  self.set(key, (self.get(key) ?? 0) + 1)
}
const top = [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(process.argv[3] ?? 40))
for (const [k, v] of top) process.stdout.write(`${(v / total * 100).toFixed(1).padStart(5)}%  ${k}\n`)
