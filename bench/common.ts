// What the benchmark runners share: child processes of systems under test and load generators (each
// tracked, and killed when the runner ends), /proc readings, the admin API, percentiles.
import { type ChildProcess, execFileSync, fork } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { LoadReport } from './load.js'

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..')
export const ADMIN_KEY = 'bench-admin-key-0123456789abcdef'
export const children = new Set<ChildProcess>()
/** What makes the run fail (printed at the end, exit code 1). */
export const failures: string[] = []

export const now = (): number => performance.timeOrigin + performance.now()

export function freePort (): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port
      s.close(() => resolve(p))
    })
  })
}

/**
 * Tracks a child for cleanup; a system under test that exits before it is stopped fails the run loudly, with its last output.
 * BENCH_SUT_OUTPUT=dir also writes each system's whole output to `dir/<name>-<pid>.log` (e.g. with
 * BENCH_NODE_ARGS=--trace-gc-nvp, V8's account of every collection).
 */
export function track (p: ChildProcess, what?: string): ChildProcess {
  children.add(p)
  let tail = ''
  const keep = (d: Buffer): void => { tail = (tail + d.toString()).slice(-16_384) }
  if (what !== undefined) {
    p.stdout?.on('data', keep)
    p.stderr?.on('data', keep)
    const dir = process.env.BENCH_SUT_OUTPUT
    if (dir !== undefined && dir !== '') {
      fs.mkdirSync(dir, { recursive: true })
      const out = fs.createWriteStream(path.join(dir, `${what}-${p.pid}.log`))
      out.on('error', (err) => process.stderr.write(`BENCH_SUT_OUTPUT: ${err.message}\n`))
      p.stdout?.pipe(out, { end: false })
      p.stderr?.pipe(out, { end: false })
      p.once('close', () => out.end())
    }
  }
  p.on('exit', (code, signal) => {
    children.delete(p)
    if (what !== undefined && !stopping.has(p)) {
      process.stderr.write(`\n${what} (pid ${p.pid}) exited unexpectedly (code ${code}, signal ${signal}); its last output:\n${tail}\n`)
      failures.push(`${what} exited unexpectedly (code ${code}, signal ${signal})`)
    }
  })
  return p
}
const stopping = new Set<ChildProcess>()

export function waitForLine (p: ChildProcess, re: RegExp, what: string): Promise<RegExpExecArray> {
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

export function stopProc (p: ChildProcess): Promise<void> {
  stopping.add(p)
  return new Promise((resolve) => {
    if (p.exitCode !== null || p.signalCode !== null) return resolve()
    const t = setTimeout(() => p.kill('SIGKILL'), 10_000)
    p.once('exit', () => { clearTimeout(t); resolve() })
    p.kill('SIGTERM')
  })
}

/** utime+stime of a process in ms, and its RSS in MiB, from /proc. */
export function procStats (pid: number | null): { cpuMs: number, rssMiB: number } {
  if (pid === null || !fs.existsSync(`/proc/${pid}/stat`)) return { cpuMs: NaN, rssMiB: NaN }
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8')
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ')
  const ticks = Number(fields[11]) + Number(fields[12])
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8')
  const rssKb = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0)
  return { cpuMs: ticks * 10, rssMiB: rssKb / 1024 }
}

/** Per thread of a process: CPU time and time spent runnable but waiting for a CPU, in ns (Linux's schedstat; empty elsewhere). */
export function threadTimes (pid: number | null): Map<number, { cpuNs: number, waitNs: number }> {
  const out = new Map<number, { cpuNs: number, waitNs: number }>()
  if (pid === null) return out
  let tids: string[]
  try { tids = fs.readdirSync(`/proc/${pid}/task`) } catch { return out }
  for (const tid of tids) {
    try {
      const [cpu, wait] = fs.readFileSync(`/proc/${pid}/task/${tid}/schedstat`, 'utf8').split(' ')
      out.set(Number(tid), { cpuNs: Number(cpu), waitNs: Number(wait) })
    } catch { /* the thread ended */ }
  }
  return out
}

/**
 * What a process's threads did between two readings of threadTimes, in ms a second: the main thread
 * first, then the others by CPU (those under 5 ms a second summed), e.g. "main 575 CPU / 308 waiting;
 * 168 / 232; 89 / 92; 6 others 61 / 90".
 */
export function describeThreads (pid: number, before: ReturnType<typeof threadTimes>, after: ReturnType<typeof threadTimes>, wallMs: number): string {
  const rows = [...after].map(([tid, a]) => {
    const b = before.get(tid) ?? { cpuNs: 0, waitNs: 0 }
    return { tid, cpu: (a.cpuNs - b.cpuNs) / 1e6 / (wallMs / 1000), wait: (a.waitNs - b.waitNs) / 1e6 / (wallMs / 1000) }
  })
  const main = rows.find((r) => r.tid === pid)
  const others = rows.filter((r) => r.tid !== pid).sort((x, y) => y.cpu - x.cpu)
  const shown = others.filter((r) => r.cpu >= 5)
  const rest = others.filter((r) => r.cpu < 5)
  const f = (r: { cpu: number, wait: number }): string => `${r.cpu.toFixed(0)} / ${r.wait.toFixed(0)}`
  return [
    ...(main !== undefined ? [`main ${main.cpu.toFixed(0)} CPU / ${main.wait.toFixed(0)} waiting`] : []),
    ...shown.map(f),
    ...(rest.length > 0 ? [`${rest.length} others ${f({ cpu: rest.reduce((a, r) => a + r.cpu, 0), wait: rest.reduce((a, r) => a + r.wait, 0) })}`] : [])
  ].join('; ')
}

export async function http<T = any> (base: string, method: string, url: string, body?: unknown, contentType = 'application/json'): Promise<T> { // eslint-disable-line @typescript-eslint/no-explicit-any
  // The bench owns its datasets: replacing their grants does not need the current ETag.
  const res = await fetch(base + url, { method, headers: { authorization: `Bearer ${ADMIN_KEY}`, 'content-type': contentType, ...(method === 'PUT' ? { 'if-match': '*' } : {}) }, ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {}) })
  const text = await res.text()
  if (res.status >= 300) throw new Error(`${method} ${url}: ${res.status} ${text}`)
  return (text.length > 0 ? JSON.parse(text) : null) as T
}

/**
 * Builds dist/ (the gateway the benchmarks run) unless it is newer than every source it is built
 * from: the build takes ~12 s of a quick run's minute on a slow machine.
 */
export function buildIfStale (): void {
  // A stamp written after a build that succeeded: tsc writes its output even when it reports errors.
  const stamp = path.join(root, 'dist/.bench-built')
  const built = fs.existsSync(stamp) ? fs.statSync(stamp).mtimeMs : 0
  const newest = (p: string): number => {
    const st = fs.statSync(p)
    if (!st.isDirectory()) return st.mtimeMs
    return Math.max(st.mtimeMs, ...fs.readdirSync(p).map((f) => newest(path.join(p, f))))
  }
  const sources = ['config', 'gateway', 'bridges', 'api', 'bin', 'console', 'package.json', 'package-lock.json', 'tsconfig.json', 'tsconfig.build.json']
    .map((f) => path.join(root, f)).filter((f) => fs.existsSync(f))
  if (built > 0 && Math.max(...sources.map(newest)) < built) return
  fs.rmSync(stamp, { force: true })
  execFileSync('npm', ['run', 'build', '--silent'], { cwd: root, stdio: 'inherit' })
  fs.writeFileSync(stamp, new Date().toISOString() + '\n')
}

export function forkLoad (): ChildProcess {
  return track(fork(path.join(root, 'bench/load.ts'), [], { execArgv: ['--import', 'tsx'], stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }))
}

export function next<K extends LoadReport['kind']> (p: ChildProcess, kind: K): Promise<Extract<LoadReport, { kind: K }>> {
  return new Promise((resolve, reject) => {
    const on = (r: LoadReport): void => {
      if (r.kind === kind) { p.off('message', on); resolve(r as Extract<LoadReport, { kind: K }>) } else if (r.kind === 'error') { p.off('message', on); reject(new Error(r.message)) }
    }
    p.on('message', on)
    p.once('exit', (code) => reject(new Error(`load generator exited (${code}) before reporting ${kind}`)))
  })
}

export function pct (sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN
  return sorted[Math.min(sorted.length - 1, Math.floor(p * sorted.length))]!
}

/** The median of unsorted values (the upper one of an even count; NaN for none). */
export function median (values: readonly number[]): number {
  return pct([...values].sort((a, b) => a - b), 0.5)
}


/** Runs a runner's main: its failure sets exit code 1; every child it started is killed at the end or on Ctrl-C. */
export function runMain (main: () => Promise<void>): void {
  // Interrupted or stopped: no system under test or generator outlives the runner.
  for (const [signal, code] of [['SIGINT', 130], ['SIGTERM', 143]] as const) {
    process.on(signal, () => { for (const c of children) c.kill('SIGKILL'); process.exit(code) })
  }
  main().catch((err: unknown) => {
    process.stderr.write(String(err instanceof Error ? err.stack : err) + '\n')
    process.exitCode = 1
  }).finally(() => {
    for (const c of children) c.kill('SIGKILL')
  })
}
