// Docker does not run on these machines: the deployment files are checked against the code instead.
// docker-compose.yml, .env.example, the Dockerfile and the RabbitMQ configuration must agree with the
// config schema (every variable, its default, the ports), with each other (service names, the auth
// backend's address) and with what streamgate serves (the auth backend's paths).
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import net from 'node:net'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { parse } from 'yaml'
import { configSchema, loadConfig } from '../../config/index.js'

const root = path.join(import.meta.dirname, '../..')
const read = (f: string): string => fs.readFileSync(path.join(root, f), 'utf8')
const keys = Object.keys(configSchema.shape)

interface Service {
  image?: string
  build?: unknown
  restart?: string
  environment?: Record<string, string | number>
  env_file?: { path: string, required: boolean }[]
  ports?: string[]
  volumes?: string[]
  healthcheck?: { test: string[] }
  profiles?: string[]
  depends_on?: Record<string, { condition: string }>
  networks?: Record<string, { aliases?: string[] }>
}
// `<<:` merge keys: the nodes share one definition (YAML 1.1 merge, as compose reads it).
const compose = parse(read('docker-compose.yml'), { merge: true }) as { services: Record<string, Service>, volumes: Record<string, unknown> }
const { streamgate, rabbitmq, questdb } = compose.services as Record<'streamgate' | 'rabbitmq' | 'questdb', Service>

/** Compose's `${VAR:-default}` interpolation, with the defaults (no .env). */
const interpolate = (s: string): string => s.replace(/\$\{[A-Z_]+:-([^}]*)\}/g, '$1')
const streamgateEnv = Object.fromEntries(Object.entries(streamgate.environment ?? {}).map(([k, v]) => [k, interpolate(String(v))]))
/** Container ports a service publishes. */
const published = (s: Service): number[] => (s.ports ?? []).map((p) => Number(p.split(':').pop()))
const defaultOf = (key: string): unknown => {
  const r = (configSchema.shape as Record<string, { safeParse: (v: unknown) => { success: boolean, data?: unknown } }>)[key]!.safeParse(undefined)
  return r.success ? r.data : undefined
}

describe('.env.example', () => {
  const lines = read('.env.example').split('\n')
  const entries = new Map(lines.map((l) => /^#? ?(STREAMGATE_[A-Z0-9_]+)=(.*)$/.exec(l)).filter((m) => m !== null).map((m) => [m[1]!, m[2]!]))

  it('lists every variable streamgate reads, and none it does not', () => {
    // STREAMGATE_CONFIG names the settings file rather than being a setting.
    const read = [...keys, 'STREAMGATE_CONFIG']
    expect(read.filter((k) => !entries.has(k))).toEqual([])
    expect([...entries.keys()].filter((k) => !read.includes(k))).toEqual([])
  })

  it('shows each default as the schema has it', () => {
    for (const k of keys) {
      const d = defaultOf(k)
      expect(entries.get(k), k).toBe(d === undefined ? '' : String(d))
    }
  })

  it('is what compose reads, optional', () => {
    expect(streamgate.env_file).toEqual([{ path: '.env', required: false }])
  })
})

describe('docker-compose.yml', () => {
  it('runs streamgate, RabbitMQ and QuestDB with health checks, restart policies and named volumes', () => {
    for (const [name, s] of Object.entries({ streamgate, rabbitmq, questdb })) {
      expect(s.healthcheck?.test.length, `${name} health check`).toBeGreaterThan(0)
      expect(s.restart, `${name} restart policy`).toBe('unless-stopped')
      const named = (s.volumes ?? []).filter((v) => !v.startsWith('.') && !v.startsWith('/')).map((v) => v.split(':')[0]!)
      expect(named.length, `${name} named volume`).toBe(1)
      expect(compose.volumes).toHaveProperty(named[0]!)
    }
    expect(streamgate.healthcheck!.test.join(' ')).toContain('/healthz')
    // The settings file and TLS material are one uncommented line away, at the paths the comments give.
    const text = read('docker-compose.yml')
    expect(text).toContain('# - ./certs:/certs:ro')
    expect(text).toContain('# - ./config/streamgate.yaml:/etc/streamgate.yaml:ro')
    expect(questdb.image).toMatch(/^questdb\/questdb:\d+\.\d+\.\d+$/)
    expect(rabbitmq.image).toMatch(/^rabbitmq:[\d.]+-management$/)
  })

  it('passes only streamgate settings, valid ones, and wires the services by name', () => {
    expect(Object.keys(streamgateEnv).filter((k) => !keys.includes(k))).toEqual([])
    const config = loadConfig(streamgateEnv)
    expect(config.dataDir).toBe('/data')
    expect(streamgate.volumes).toContain('streamgate-data:/data')
    const amqp = new URL(config.amqp!.url)
    expect(amqp.hostname).toBe('rabbitmq')
    expect(published(rabbitmq)).toContain(Number(amqp.port))
    expect(decodeURIComponent(amqp.username)).toBe(interpolate(String(rabbitmq.environment!.RABBITMQ_DEFAULT_USER)))
    expect(decodeURIComponent(amqp.password)).toBe(interpolate(String(rabbitmq.environment!.RABBITMQ_DEFAULT_PASS)))
    expect(config.questdb!.ilp).toMatch(/addr=questdb:9000;/)
    expect(published(questdb)).toContain(9000)
    const pg = new URL(config.questdb!.pg)
    expect(pg.hostname).toBe('questdb')
    expect(published(questdb)).toContain(Number(pg.port))
    expect(questdb.environment).toMatchObject({ QDB_PG_USER: pg.username, QDB_PG_PASSWORD: pg.password })
  })

  it('publishes the listeners on the ports streamgate binds by default', () => {
    const { ports } = loadConfig(streamgateEnv)
    expect(published(streamgate).sort()).toEqual([ports.mqtt, ports.ws, ports.http, ports.mqtts, ports.wss, ports.https].sort())
    for (const p of streamgate.ports!) expect(p.split(':')[0]).toBe(p.split(':')[1])
  })
})

describe('docker-compose.yml, profile cluster', () => {
  const cluster = ['streamgate-a', 'streamgate-b', 'redis', 'postgres', 'haproxy']
  const node = (name: string): Service => compose.services[name]!
  const nodeEnv = (name: string): Record<string, string> => Object.fromEntries(Object.entries(node(name).environment ?? {}).map(([k, v]) => [k, interpolate(String(v))]))
  const haproxy = read('config/haproxy/haproxy.cfg')

  it('adds two nodes, Redis, PostgreSQL and HAProxy only under the profile, with health checks and volumes of their own', () => {
    for (const name of cluster) {
      expect(node(name).profiles, name).toEqual(['cluster'])
      expect(node(name).healthcheck?.test.length, `${name} health check`).toBeGreaterThan(0)
      expect(node(name).restart, `${name} restart policy`).toBe('unless-stopped')
    }
    expect(streamgate.profiles).toBeUndefined()
    const volumes = ['streamgate-a', 'streamgate-b', 'redis', 'postgres'].map((n) => node(n).volumes![0]!.split(':')[0]!)
    expect(new Set(volumes).size).toBe(4)
    for (const v of volumes) expect(compose.volumes).toHaveProperty(v)
  })

  it('gives each node the stack\'s settings plus Redis, PostgreSQL and its own id, all valid', () => {
    const pg = node('postgres').environment!
    const ids = new Set<string>()
    for (const name of ['streamgate-a', 'streamgate-b']) {
      const env = nodeEnv(name)
      expect(Object.keys(env).filter((k) => !keys.includes(k))).toEqual([])
      const config = loadConfig(env)
      expect({ ...env, STREAMGATE_REDIS_URL: undefined, STREAMGATE_METADATA_URL: undefined, STREAMGATE_NODE_ID: undefined }).toEqual({ ...streamgateEnv, STREAMGATE_REDIS_URL: undefined, STREAMGATE_METADATA_URL: undefined, STREAMGATE_NODE_ID: undefined })
      expect(new URL(config.redis!.url).hostname).toBe('redis')
      const meta = new URL(config.metadataUrl!)
      expect([meta.hostname, meta.username, decodeURIComponent(meta.password), meta.pathname]).toEqual(['postgres', pg.POSTGRES_USER, interpolate(String(pg.POSTGRES_PASSWORD)), `/${pg.POSTGRES_DB}`])
      ids.add(config.nodeId!)
    }
    expect(ids.size).toBe(2)
    // Node a bootstraps the admin key in PostgreSQL before b starts.
    expect(node('streamgate-b').depends_on).toEqual({ 'streamgate-a': { condition: 'service_healthy' } })
  })

  it('balances every port the single node publishes, and the auth backend, over both nodes checked on /readyz', () => {
    const { ports, amqp } = loadConfig(nodeEnv('streamgate-a'))
    const bound = [...haproxy.matchAll(/^\s*bind :(\d+)$/gm)].map((m) => Number(m[1]))
    expect(bound.sort()).toEqual([...published(streamgate), amqp!.authPort].sort())
    expect(published(node('haproxy')).sort()).toEqual(published(streamgate).sort())
    for (const port of bound) {
      for (const n of ['streamgate-a', 'streamgate-b']) expect(haproxy, `${n}:${port}`).toMatch(new RegExp(`^\\s*server \\w+ ${n}:${port}$`, 'm'))
    }
    expect(haproxy).toMatch(new RegExp(`check port ${ports.http}`))
    expect(haproxy).toMatch(/http-check send meth GET uri \/readyz/)
    // RabbitMQ asks `streamgate` (config/rabbitmq): in the cluster that name is HAProxy.
    expect(node('haproxy').networks?.default?.aliases).toEqual(['streamgate'])
    expect(node('haproxy').volumes).toContain('./config/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro')
  })
})

describe('RabbitMQ configuration', () => {
  const conf = new Map(read('config/rabbitmq/rabbitmq.conf').split('\n').filter((l) => /^[a-z]/.test(l)).map((l) => l.split(' = ') as [string, string]))

  it('asks streamgate, by its service name and auth port, on the paths it serves', () => {
    const config = loadConfig(streamgateEnv)
    expect(config.amqp!.authBind).toBe('0.0.0.0')
    for (const what of ['user', 'vhost', 'resource', 'topic']) {
      const url = new URL(conf.get(`auth_http.${what}_path`)!)
      expect(url.hostname).toBe('streamgate')
      expect(Number(url.port)).toBe(config.amqp!.authPort)
      expect(url.pathname).toBe(`/auth/${what}`)
    }
    expect(conf.get('auth_http.http_method')).toBe('post')
    expect(compose.services.rabbitmq!.volumes).toContain('./config/rabbitmq/rabbitmq.conf:/etc/rabbitmq/conf.d/20-streamgate.conf:ro')
  })

  it('turns on management and the HTTP auth backend, and leaves the MQTT plugin off', () => {
    const plugins = read('config/rabbitmq/enabled_plugins')
    expect(plugins).toContain('rabbitmq_management')
    expect(plugins).toContain('rabbitmq_auth_backend_http')
    expect(plugins).not.toContain('rabbitmq_mqtt')
    // The gateway's own user is internal; principals go through the (cached) HTTP backend.
    expect(conf.get('auth_backends.1')).toBe('internal')
    expect([conf.get('auth_backends.2'), conf.get('auth_cache.cached_backend')]).toEqual(['cache', 'http'])
  })
})

describe('QuestDB health check', () => {
  // Run as compose runs it (CMD, `$$` is a literal `$`), against a stand-in for QuestDB's health
  // port: healthy only on an answer of 200, not on a refused connection or any other answer.
  const run = async (status: number | null): Promise<number | null> => {
    const test = questdb.healthcheck!.test
    expect(test.slice(0, 3)).toEqual(['CMD', 'bash', '-c'])
    const server = net.createServer((sock) => {
      sock.on('error', () => undefined) // bash hangs up after the status line
      sock.once('data', () => sock.end(`HTTP/1.1 ${status} X\r\nContent-Length: 0\r\n\r\n`))
    })
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve))
    const port = (server.address() as net.AddressInfo).port
    if (status === null) await new Promise((resolve) => server.close(resolve))
    const script = test[3]!.replaceAll('$$', '$').replace('127.0.0.1/9003', `127.0.0.1/${port}`)
    expect(test[3]).toContain('127.0.0.1/9003')
    const code = await new Promise<number | null>((resolve) => execFile('bash', ['-c', script], { timeout: 5000 }, (err) => resolve(err === null ? 0 : (err as { code?: number }).code ?? 1)))
    if (status !== null) server.close()
    return code
  }

  it('is healthy on 200 only', async () => {
    expect(await run(200)).toBe(0)
    expect(await run(503)).not.toBe(0)
    expect(await run(null)).not.toBe(0)
  })
})

describe('Dockerfile', () => {
  const dockerfile = read('Dockerfile')

  it('builds in stages, installs production dependencies only, runs as a non-root user', () => {
    expect(dockerfile.match(/^FROM /gm)!.length).toBeGreaterThanOrEqual(2)
    expect(dockerfile).toMatch(/^RUN npm ci --omit=dev/m)
    expect(dockerfile).toMatch(/^USER node$/m)
    expect(dockerfile).toMatch(/^COPY --from=build \/app\/dist/m)
    // npm run build: tsc and the console's pages (dist/console); README's /console/ needs them.
    expect(dockerfile).toMatch(/^COPY console console$/m)
    expect(dockerfile).toMatch(/^RUN npm run build$/m)
    expect(JSON.parse(read('package.json')).scripts.build).toContain("cpSync('console', 'dist/console'")
    expect(dockerfile).toMatch(/^COPY config\/streamgate.yaml /m)
    expect(dockerfile).toMatch(/^HEALTHCHECK [\s\S]*\/healthz/m)
  })

  it('exposes the default ports and stores its data in a volume', () => {
    const c = loadConfig({})
    const exposed = /^EXPOSE (.*)$/m.exec(dockerfile)![1]!.split(' ').map(Number)
    // Not the RabbitMQ auth backend: only RabbitMQ calls it, over the compose network.
    expect(exposed.sort()).toEqual([c.ports.mqtt, c.ports.ws, c.ports.http, c.ports.mqtts, c.ports.wss, c.ports.https].sort())
    expect(dockerfile).toMatch(/STREAMGATE_DATA_DIR=\/data/)
    expect(dockerfile).toMatch(/^VOLUME \["\/data"\]$/m)
  })

  it('keeps the build context small', () => {
    const ignored = read('.dockerignore').split('\n')
    for (const p of ['.git', 'node_modules', 'dist', 'data', 'test', 'bench']) expect(ignored).toContain(p)
  })
})
