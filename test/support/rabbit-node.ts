// A second RabbitMQ node, started for a test on free ports with its own data and config, using
// streamgate's HTTP auth backend (rabbitmq_auth_backend_http), and stopped by PID afterwards.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import os from 'node:os'
import path from 'node:path'
import { waitUntil } from '../helpers.js'

const SERVER = '/usr/lib/rabbitmq/bin/rabbitmq-server'

function freePort (): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const p = (s.address() as net.AddressInfo).port
      s.close(() => resolve(p))
    })
  })
}

function portOpen (port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = net.connect(port, '127.0.0.1', () => { s.destroy(); resolve(true) })
    s.on('error', () => resolve(false))
  })
}

export interface RabbitNode {
  readonly port: number
  readonly url: (user: string, password: string) => string
  /** Stops the node, keeping its data (durable exchanges and queues survive). */
  halt: () => Promise<void>
  /** Starts it again on the same ports and data. */
  resume: () => Promise<void>
  /** Stops it for good and removes its data. */
  stop: () => Promise<void>
}

export function rabbitAvailable (): boolean {
  return fs.existsSync(SERVER)
}

export async function startRabbitNode (authBase: string): Promise<RabbitNode> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-rabbit-'))
  const port = await freePort()
  const dist = await freePort()
  const name = `sgtest${process.pid}x${port}@localhost`
  fs.writeFileSync(path.join(dir, 'enabled_plugins'), '[rabbitmq_auth_backend_http].\n')
  fs.writeFileSync(path.join(dir, 'rabbitmq.conf'), [
    `listeners.tcp.default = 127.0.0.1:${port}`,
    'auth_backends.1 = http',
    'auth_http.http_method = post',
    `auth_http.user_path = ${authBase}/auth/user`,
    `auth_http.vhost_path = ${authBase}/auth/vhost`,
    `auth_http.resource_path = ${authBase}/auth/resource`,
    `auth_http.topic_path = ${authBase}/auth/topic`,
    'loopback_users = none'
  ].join('\n') + '\n')
  const env = {
    ...process.env,
    RABBITMQ_NODENAME: name,
    RABBITMQ_NODE_PORT: String(port),
    RABBITMQ_DIST_PORT: String(dist),
    RABBITMQ_CONFIG_FILE: path.join(dir, 'rabbitmq.conf'),
    RABBITMQ_MNESIA_BASE: path.join(dir, 'mnesia'),
    RABBITMQ_LOG_BASE: path.join(dir, 'log'),
    RABBITMQ_ENABLED_PLUGINS_FILE: path.join(dir, 'enabled_plugins'),
    RABBITMQ_PLUGINS_EXPAND_DIR: path.join(dir, 'plugins-expand'),
    RABBITMQ_PID_FILE: path.join(dir, 'pid')
  }
  let proc: ChildProcess | null = null
  const launch = async (): Promise<void> => {
    proc = spawn(SERVER, [], { env, stdio: 'ignore' })
    await waitUntil(() => portOpen(port), 60_000, `RabbitMQ node ${name} to listen`)
  }
  const halt = async (): Promise<void> => {
    try { execFileSync('rabbitmqctl', ['-n', name, 'stop'], { stdio: 'ignore', timeout: 30_000 }) } catch { /* not up */ }
    const p = proc
    proc = null
    if (p !== null && p.exitCode === null && p.signalCode === null) {
      p.kill('SIGKILL')
      await new Promise((resolve) => p.once('exit', resolve))
    }
    // The Erlang VM may outlive the wrapper script: stop it by the PID it wrote.
    try { process.kill(Number(fs.readFileSync(path.join(dir, 'pid'), 'utf8').trim()), 'SIGKILL') } catch { /* gone */ }
    await waitUntil(async () => !(await portOpen(port)), 30_000, `RabbitMQ node ${name} to stop`)
  }
  const stop = async (): Promise<void> => {
    await halt().catch(() => undefined)
    fs.rmSync(dir, { recursive: true, force: true })
  }
  try {
    await launch()
  } catch (err) {
    await stop()
    throw err
  }
  return { port, url: (u, p) => `amqp://${encodeURIComponent(u)}:${encodeURIComponent(p)}@127.0.0.1:${port}`, halt, resume: launch, stop }
}
