// The benchmark runner: `npm run bench` (full: 3 runs each) or `npm run bench -- --quick` (one short run).
// Starts each system under test as its own process on loopback (streamgate on the embedded default,
// bare Aedes, Mosquitto when it is on the PATH), drives it with load generator processes, and reports
// msgs/s, latency, broker CPU and RSS, with streamgate/Aedes and streamgate/Mosquitto ratios from the
// same run. For streamgate it also checks that the stored row count equals the acknowledged count.
import { type ChildProcess, execFileSync, fork, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { LoadCommand, LoadReport } from './load.js'

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
const args = new Set(process.argv.slice(2))
const quick = args.has('--quick')
/** `--only=streamgate,aedes` limits the systems; `--workloads=qos1-flood` the workloads. */
const only = new Set(process.argv.find((a) => a.startsWith('--only='))?.slice(7).split(',') ?? [])
const onlyWorkloads = new Set(process.argv.find((a) => a.startsWith('--workloads='))?.slice(12).split(',') ?? [])
const RUNS = quick ? 1 : 3
const PUBLISHERS = 10
const PER_PUBLISHER = quick ? 2000 : 10_000
const GENERATORS = 2
const ADMIN_KEY = 'bench-admin-key-0123456789abcdef'
const PAYLOAD = '{"site":"site-0001","temp":21.53,"hum":48.27,"pressure":1013.25,"t":0}'
const children = new Set<ChildProcess>()

interface Sut {
  readonly name: 'streamgate' | 'aedes' | 'mosquitto'
  readonly proc: ChildProcess
  readonly url: string
  /** Prepares a fresh dataset (streamgate) and returns how clients authenticate and where they publish. */
  prepare (dataset: string): Promise<{ pubs: { username?: string, password?: string, topic: string }[], sub: { username?: string, password?: string }, filter: string }>
  stored? (dataset: string, expect: number): Promise<number>
  stop (): Promise<void>
}

function freePort (): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port
      s.close(() => resolve(p))
    })
  })
}

function track (p: ChildProcess): ChildProcess {
  children.add(p)
  p.on('exit', () => children.delete(p))
  return p
}

function waitForLine (p: ChildProcess, re: RegExp, what: string): Promise<RegExpExecArray> {
  return new Promise((resolve, reject) => {
    let out = ''
    const t = setTimeout(() => reject(new Error(`${what} did not start:\n${out}`)), 30_000)
    const on = (d: Buffer): void => {
      out += d.toString()
      const m = re.exec(out)
      if (m !== null) { clearTimeout(t); resolve(m) }
    }
    p.stdout?.on('data', on)
    p.stderr?.on('data', on)
    p.once('exit', (code) => { clearTimeout(t); reject(new Error(`${what} exited with ${code}:\n${out}`)) })
  })
}

function stopProc (p: ChildProcess): Promise<void> {
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve()
    const t = setTimeout(() => p.kill('SIGKILL'), 10_000)
    p.once('exit', () => { clearTimeout(t); resolve() })
    p.kill('SIGTERM')
  })
}

/** utime+stime of a process in ms, and its RSS in MiB, from /proc. */
function procStats (pid: number): { cpuMs: number, rssMiB: number } {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(fields[11]) + Number(fields[12])
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
  return { cpuMs: ticks * 10, rssMiB: rssKb / 1024 }
}

async function http<T = any> (base: string, method: string, url: string, body?: unknown): Promise<T> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const res = await fetch(base + url, { method, headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': 'application/json' }, ...(body !== undefined ? { body: JSON.stringify(body) } : {}) })
  const text = await res.text()
  if (res.status >= 300) throw new Error(`${method} ${url}: ${res.status} ${text}`)
  return (text.length > 0 ? JSON.parse(text) : null) as T
}

async function startStreamgate (): Promise<Sut> {
  const dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-bench-'))
  // BENCH_NODE_ARGS, e.g. "--cpu-prof --cpu-prof-dir=/tmp/prof", profiles the gateway under load.
  const nodeArgs = (process.env.BENCH_NODE_ARGS ?? '').split(' ').filter((a) => a !== '')
  const proc = track(spawn(process.execPath, [...nodeArgs, path.join(root, 'dist/bin/streamgate.js')], {
    env: {
      ...process.env, STREAMGATE_BIND: '127.0.0.1', STREAMGATE_MQTT_PORT: '0', STREAMGATE_WS_PORT: '0', STREAMGATE_HTTP_PORT: '0',
      STREAMGATE_DATA_DIR: dataDir, STREAMGATE_ADMIN_KEY: ADMIN_KEY, STREAMGATE_LOG_LEVEL: 'warn'
    },
    stdio: ['ignore', 'pipe', 'pipe']
  }))
  const m = await waitForLine(proc, /mqtt [^:]+:(\d+).*http http:\/\/[^:]+:(\d+)/, 'streamgate')
  const url = `mqtt://127.0.0.1:${m[1]}`
  const api = `http://127.0.0.1:${m[2]}`
  const keys: Record<string, string> = {}
  for (const id of [...Array.from({ length: PUBLISHERS }, (_, i) => `pub${i}`), 'sub']) {
    await http(api, 'POST', '/v1/principals', { id, kind: id === 'sub' ? 'service' : 'device' })
    keys[id] = (await http<{ key: string }>(api, 'POST', `/v1/principals/${id}/keys`, {})).key
  }
  return {
    name: 'streamgate',
    proc,
    url,
    async prepare (dataset) {
      await http(api, 'POST', '/v1/datasets', { id: dataset, schema: { tags: ['site'], fields: { temp: 'double', hum: 'double', pressure: 'double', t: 'double' } } })
      await http(api, 'PUT', `/v1/datasets/${dataset}/access`, {
        grants: [...Array.from({ length: PUBLISHERS }, (_, i) => ({ principal: `pub${i}`, actions: ['publish'] })), { principal: 'sub', actions: ['subscribe'] }]
      })
      return {
        pubs: Array.from({ length: PUBLISHERS }, (_, i) => ({ username: `pub${i}`, password: keys[`pub${i}`]!, topic: `datasets/${dataset}/pub${i}` })),
        sub: { username: 'sub', password: keys.sub! },
        filter: `datasets/${dataset}/#`
      }
    },
    async stored (dataset, expect) {
      const deadline = Date.now() + 60_000
      for (;;) {
        const s = await http<{ stored: number }>(api, 'GET', `/v1/datasets/${dataset}/stats`)
        const st = await http<{ consumers: { lag: number }[] }>(api, 'GET', '/v1/status')
        if ((s.stored >= expect && st.consumers.every((c) => c.lag === 0)) || Date.now() > deadline) return s.stored
        await new Promise((resolve) => setTimeout(resolve, 100))
      }
    },
    async stop () {
      await stopProc(proc)
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }
}

function anonymous (name: 'aedes' | 'mosquitto', proc: ChildProcess, port: number, cleanup = (): void => undefined): Sut {
  return {
    name,
    proc,
    url: `mqtt://127.0.0.1:${port}`,
    async prepare (dataset) {
      return { pubs: Array.from({ length: PUBLISHERS }, (_, i) => ({ topic: `datasets/${dataset}/pub${i}` })), sub: {}, filter: `datasets/${dataset}/#` }
    },
    async stop () { await stopProc(proc); cleanup() }
  }
}

async function startAedes (): Promise<Sut> {
  const proc = track(spawn(process.execPath, ['--import', 'tsx', path.join(root, 'bench/aedes-server.ts')], { stdio: ['ignore', 'pipe', 'pipe'] }))
  const m = await waitForLine(proc, /READY (\d+)/, 'aedes')
  return anonymous('aedes', proc, Number(m[1]))
}

async function startMosquitto (): Promise<Sut | null> {
  try { execFileSync('which', ['mosquitto'], { stdio: 'ignore' }) } catch { return null }
  const port = await freePort()
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-bench-mosq-'))
  const conf = path.join(dir, 'mosquitto.conf')
  fs.writeFileSync(conf, [
    `listener ${port} 127.0.0.1`, 'allow_anonymous true', 'set_tcp_nodelay true',
    'max_inflight_messages 0', 'max_queued_messages 0', 'max_queued_bytes 0', 'persistence false', 'log_type error'
  ].join('\n') + '\n')
  const proc = track(spawn('mosquitto', ['-c', conf], { stdio: ['ignore', 'pipe', 'pipe'] }))
  for (let i = 0; i < 100; i++) {
    const up = await new Promise<boolean>((resolve) => {
      const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
      s.on('error', () => resolve(false))
    })
    if (up) break
    await new Promise((resolve) => setTimeout(resolve, 50))
  }
  return anonymous('mosquitto', proc, port, () => fs.rmSync(dir, { recursive: true, force: true }))
}

function forkLoad (): ChildProcess {
  return track(fork(path.join(root, 'bench/load.ts'), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
}

function next (p: ChildProcess, kind: LoadReport['kind']): Promise<LoadReport> {
  return new Promise((resolve, reject) => {
    const on = (r: LoadReport): void => {
      if (r.kind === kind) { p.off('message', on); resolve(r) } else if (r.kind === 'error') { p.off('message', on); reject(new Error(r.message)) }
    }
    p.on('message', on)
    p.once('exit', (code) => { if (code !== 0) reject(new Error(`load generator exited with ${code}`)) })
  })
}

function pct (sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!
}

interface RunResult {
  msgsPerSec: number
  sent: number
  acked: number
  received: number
  stored: number | null
  latencyMs: { p50: number, p99: number, p999: number }
  ackLatencyMs: { p50: number, p99: number } | null
  brokerCpuPct: number
  brokerRssMiB: number
  generatorCpuPct: number
}

let datasetNo = 0

async function flood (sut: Sut, qos: 0 | 1): Promise<RunResult> {
  const dataset = `bench_${Date.now().toString(36)}_${++datasetNo}`
  const plan = await sut.prepare(dataset)
  const total = PUBLISHERS * PER_PUBLISHER
  const sub = forkLoad()
  sub.send({ kind: 'subscribe', url: sut.url, ...plan.sub, filter: plan.filter, qos, expect: total, timeoutMs: 120_000 } satisfies LoadCommand)
  await next(sub, 'subscribed')
  const gens: ChildProcess[] = []
  const per = PUBLISHERS / GENERATORS
  for (let g = 0; g < GENERATORS; g++) {
    const p = forkLoad()
    gens.push(p)
    p.send({ kind: 'publish', url: sut.url, clients: plan.pubs.slice(g * per, (g + 1) * per), qos, perClient: PER_PUBLISHER, inflight: 100, payload: PAYLOAD } satisfies LoadCommand)
  }
  await Promise.all(gens.map((p) => next(p, 'ready')))
  const before = procStats(sut.proc.pid!)
  const wallStart = performance.timeOrigin + performance.now()
  const pubDone = gens.map((p) => next(p, 'publisher-done'))
  const subDone = next(sub, 'subscriber-done')
  for (const p of gens) p.send('go')
  const pubs = (await Promise.all(pubDone)) as Extract<LoadReport, { kind: 'publisher-done' }>[]
  const s = (await subDone) as Extract<LoadReport, { kind: 'subscriber-done' }>
  const after = procStats(sut.proc.pid!)
  const startedAt = Math.min(...pubs.map((p) => p.startedAt))
  const elapsed = Math.max(1, s.lastAt - startedAt)
  const wall = performance.timeOrigin + performance.now() - wallStart
  const acked = pubs.reduce((a, p) => a + p.acked, 0)
  const sent = pubs.reduce((a, p) => a + p.sent, 0)
  const stored = sut.stored !== undefined ? await sut.stored(dataset, qos === 1 ? acked : sent) : null
  const lat = [...s.latenciesMs].sort((a, b) => a - b)
  const ackLat = pubs.flatMap((p) => p.ackLatenciesMs).sort((a, b) => a - b)
  return {
    msgsPerSec: Math.round(s.received / (elapsed / 1000)),
    sent,
    acked,
    received: s.received,
    stored,
    latencyMs: { p50: pct(lat, 0.5), p99: pct(lat, 0.99), p999: pct(lat, 0.999) },
    ackLatencyMs: qos === 1 ? { p50: pct(ackLat, 0.5), p99: pct(ackLat, 0.99) } : null,
    brokerCpuPct: Math.round((after.cpuMs - before.cpuMs) / wall * 100),
    brokerRssMiB: Math.round(after.rssMiB),
    generatorCpuPct: Math.round((pubs.reduce((a, p) => a + p.cpuMs, 0) + s.cpuMs) / wall * 100)
  }
}

interface Summary { median: number, min: number, max: number, runs: RunResult[] }

function summarize (runs: RunResult[]): Summary {
  const rates = runs.map((r) => r.msgsPerSec).sort((a, b) => a - b)
  return { median: rates[Math.floor(rates.length / 2)]!, min: rates[0]!, max: rates.at(-1)!, runs }
}

async function main (): Promise<void> {
  if (!quick || !fs.existsSync(path.join(root, 'dist/bin/streamgate.js'))) {
    execFileSync('npm', ['run', 'build', '--silent'], { cwd: root, stdio: 'inherit' })
  }
  const workloads = [
    { name: 'qos1-flood', qos: 1 as const },
    { name: 'qos0-flood', qos: 0 as const }
  ].filter((w) => onlyWorkloads.size === 0 || onlyWorkloads.has(w.name))
  const starters: (() => Promise<Sut | null>)[] = [startAedes, startStreamgate, startMosquitto]
  const results: Record<string, Record<string, Summary>> = {}
  const failures: string[] = []
  for (const start of starters) {
    const sut = await start()
    if (sut === null) continue
    if (only.size > 0 && !only.has(sut.name)) {
      await sut.stop()
      continue
    }
    try {
      for (const w of workloads) {
        const runs: RunResult[] = []
        for (let i = 0; i < RUNS; i++) {
          const r = await flood(sut, w.qos)
          runs.push(r)
          process.stdout.write(`${sut.name.padEnd(10)} ${w.name.padEnd(11)} run ${i + 1}: ${r.msgsPerSec} msg/s, received ${r.received}/${r.sent}` +
            (r.stored !== null ? `, stored ${r.stored}` : '') + `, p99 ${r.latencyMs.p99.toFixed(2)} ms, broker CPU ${r.brokerCpuPct}%, RSS ${r.brokerRssMiB} MiB, generators CPU ${r.generatorCpuPct}%\n`)
          if (sut.name === 'streamgate' && w.qos === 1 && r.stored !== r.acked) failures.push(`${w.name} run ${i + 1}: stored ${r.stored} != acknowledged ${r.acked}`)
        }
        ;(results[w.name] ??= {})[sut.name] = summarize(runs)
      }
    } finally {
      await sut.stop()
    }
  }

  const lines: string[] = []
  const date = new Date().toISOString()
  const command = `npm run bench${quick ? ' -- --quick' : ''}`
  lines.push(`Command: \`${command}\` on ${os.cpus().length} cores (${os.cpus()[0]?.model ?? 'unknown'}), ${Math.round(os.totalmem() / 2 ** 30)} GiB, Node ${process.version}, ${date}.`)
  lines.push(`${PUBLISHERS} publishers in ${GENERATORS} generator processes, 1 subscriber on the dataset wildcard, ${PER_PUBLISHER * PUBLISHERS} messages of ~100 B per run, ${RUNS} run(s); msgs/s = messages received by the subscriber / time from the first publish to the last delivery.`)
  lines.push('')
  lines.push('| workload | system | msgs/s median (min–max) | p50 / p99 / p99.9 ms publish→subscriber | p50 / p99 ms publish→PUBACK | broker CPU % | broker RSS MiB | generators CPU % | vs Aedes | vs Mosquitto |')
  lines.push('| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |')
  for (const [w, bySys] of Object.entries(results)) {
    for (const [sys, s] of Object.entries(bySys)) {
      const mid = s.runs.find((r) => r.msgsPerSec === s.median) ?? s.runs[0]!
      const ratio = (other: string): string => bySys[other] !== undefined && sys !== other ? (s.median / bySys[other].median).toFixed(2) + '×' : '–'
      lines.push(`| ${w} | ${sys} | ${s.median} (${s.min}–${s.max}) | ${mid.latencyMs.p50.toFixed(2)} / ${mid.latencyMs.p99.toFixed(2)} / ${mid.latencyMs.p999.toFixed(2)} | ` +
        `${mid.ackLatencyMs === null ? '–' : mid.ackLatencyMs.p50.toFixed(2) + ' / ' + mid.ackLatencyMs.p99.toFixed(2)} | ${mid.brokerCpuPct} | ${mid.brokerRssMiB} | ${mid.generatorCpuPct} | ${ratio('aedes')} | ${ratio('mosquitto')} |`)
    }
  }
  const table = lines.join('\n')
  process.stdout.write('\n' + table + '\n')

  const resultsDir = path.join(root, 'bench/results')
  fs.mkdirSync(resultsDir, { recursive: true })
  const file = path.join(resultsDir, `${date.slice(0, 19).replaceAll(':', '-')}${quick ? '-quick' : ''}.json`)
  fs.writeFileSync(file, JSON.stringify({ date, command, quick, machine: { cores: os.cpus().length, model: os.cpus()[0]?.model, memGiB: os.totalmem() / 2 ** 30, node: process.version }, results, failures }, null, 2))
  const md = path.join(root, 'BENCHMARKS.md')
  const current = fs.existsSync(md) ? fs.readFileSync(md, 'utf8') : '# Benchmarks\n\n<!-- bench:latest:start -->\n<!-- bench:latest:end -->\n'
  const section = `<!-- bench:latest:start -->\n## Latest run${quick ? ' (quick)' : ''}\n\n${table}\n<!-- bench:latest:end -->`
  fs.writeFileSync(md, current.replace(/<!-- bench:latest:start -->[\s\S]*<!-- bench:latest:end -->/, section))
  process.stdout.write(`\nwrote ${path.relative(root, file)} and BENCHMARKS.md\n`)
  if (failures.length > 0) {
    process.stderr.write('FAILED: stored count differs from acknowledged count:\n  ' + failures.join('\n  ') + '\n')
    process.exitCode = 1
  }
}

const cleanup = (): void => { for (const c of children) c.kill('SIGKILL') }
process.on('SIGINT', () => { cleanup(); process.exit(130) })
main().catch((err: unknown) => {
  process.stderr.write(String(err instanceof Error ? err.stack : err) + '\n')
  process.exitCode = 1
}).finally(() => {
  for (const c of children) c.kill('SIGKILL')
})
