// The gateway as a child process (for kill -9 tests): started from source with tsx, stopped by PID.
import { type ChildProcess, spawn } from 'node:child_process'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { Env } from '../../config/index.js'
import { testEnv, waitUntil } from '../helpers.js'

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..')
const children = new Set<ChildProcess>()

export interface Child { proc: ChildProcess, mqttPort: number, httpPort: number, output: () => string }

const LISTENING = /streamgate listening: mqtt [^:]+:(\d+).*http http:\/\/[^:]+:(\d+)/

export function spawnGateway (env: Env): ChildProcess {
  const proc = spawn(process.execPath, ['--import', 'tsx', path.join(root, 'bin/streamgate.ts')], { cwd: root, env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] })
  children.add(proc)
  proc.on('exit', () => children.delete(proc))
  return proc
}

export async function startChild (dataDir: string, extraEnv: Env = {}): Promise<Child> {
  const proc = spawnGateway({ ...testEnv(dataDir, { STREAMGATE_LOG_LEVEL: 'warn', STREAMGATE_QUERY_MAX_ROWS: '100000' }), ...extraEnv })
  let out = ''
  proc.stdout!.on('data', (d: Buffer) => { out += d.toString() })
  proc.stderr!.on('data', (d: Buffer) => { out += d.toString() })
  await waitUntil(() => LISTENING.test(out) || proc.exitCode !== null, 30_000, 'the gateway to start')
  const m = LISTENING.exec(out)
  if (m === null) throw new Error('gateway did not start:\n' + out)
  return { proc, mqttPort: Number(m[1]), httpPort: Number(m[2]), output: () => out }
}

export function stopChild (proc: ChildProcess, signal: NodeJS.Signals): Promise<number | null> {
  return new Promise((resolve) => {
    if (proc.exitCode !== null || proc.signalCode !== null) return resolve(proc.exitCode)
    proc.once('exit', (code) => resolve(code))
    proc.kill(signal)
  })
}

/** Kills every gateway this test file started (afterAll). */
export async function killAll (): Promise<void> {
  for (const c of [...children]) await stopChild(c, 'SIGKILL')
}
