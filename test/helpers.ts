// Shared test helpers: a gateway in-process on ephemeral ports with its own data directory, real
// mqtt.js clients, and an API client.
import { randomUUID } from 'node:crypto'
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import mqtt, { type IClientOptions, type MqttClient } from 'mqtt'
import { pino } from 'pino'
import { startStreamgate, type Streamgate } from '../bin/app.js'
import { loadConfig, type Env } from '../config/index.js'

export const ADMIN_KEY = 'test-admin-key-0123456789abcdef'

export function tmpDataDir (): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'sg-test-'))
}

export function testEnv (dataDir: string, extra: Env = {}): Env {
  return {
    STREAMGATE_BIND: '127.0.0.1',
    STREAMGATE_MQTT_PORT: '0',
    STREAMGATE_WS_PORT: '0',
    STREAMGATE_HTTP_PORT: '0',
    STREAMGATE_MQTTS_PORT: '0',
    STREAMGATE_WSS_PORT: '0',
    STREAMGATE_HTTPS_PORT: '0',
    STREAMGATE_DATA_DIR: dataDir,
    STREAMGATE_ADMIN_KEY: ADMIN_KEY,
    STREAMGATE_LOG_LEVEL: 'silent',
    ...extra
  }
}

export interface TestGateway {
  readonly sg: Streamgate
  readonly dataDir: string
  readonly mqttUrl: string
  readonly wsUrl: string
  readonly httpUrl: string
  /** Closes the gateway (waiting up to `drainMs` for its sinks, default STREAMGATE_SHUTDOWN_TIMEOUT_MS) and removes its data. */
  stop (drainMs?: number): Promise<void>
}

export async function startTestGateway (extra: Env = {}, dataDir = tmpDataDir()): Promise<TestGateway> {
  const config = loadConfig(testEnv(dataDir, extra))
  const sg = await startStreamgate(config, { log: pino({ level: process.env.TEST_LOG_LEVEL ?? 'silent' }) })
  return {
    sg,
    dataDir,
    mqttUrl: `mqtt://127.0.0.1:${sg.addresses.mqtt.port}`,
    wsUrl: `ws://127.0.0.1:${sg.addresses.ws.port}/mqtt`,
    httpUrl: `http://127.0.0.1:${sg.addresses.http.port}`,
    async stop (drainMs?: number) {
      await sg.close(drainMs)
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }
}

export interface ApiResponse<T = unknown> { status: number, headers: Headers, body: T }

export async function api<T = any> (base: string, key: string | null, method: string, url: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiResponse<T>> {
  const send = (): Promise<Response> => fetch(base + url, {
    method,
    headers: {
      ...(key !== null ? { authorization: `Bearer ${key}` } : {}),
      ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
      ...headers
    },
    ...(body !== undefined ? { body: typeof body === 'string' ? body : JSON.stringify(body) } : {})
  })
  // A server that refused an upload early (413) closes that connection; the client's pool may still
  // hand it out once. Like any HTTP client, retry a GET that met a reset connection.
  const res = await send().catch((err: Error & { cause?: { code?: string } }) => {
    if (method === 'GET' && err.cause?.code === 'ECONNRESET') return send()
    throw err
  })
  const text = await res.text()
  let parsed: unknown = text
  try { parsed = text.length > 0 ? JSON.parse(text) : null } catch { /* keep text */ }
  return { status: res.status, headers: res.headers, body: parsed as T }
}

/** Rows stored for a dataset (the embedded store through the sink thread, or QuestDB). */
export async function storedCount (sg: Streamgate, dataset: string): Promise<number> {
  return (await sg.records.stats(sg.management.getDataset(dataset))).stored
}

export const WEATHER_SCHEMA = {
  timestamp: 'ts',
  tags: ['site'],
  fields: { temp: 'double', hum: 'double', count: 'long', ok: 'boolean', note: 'string' }
}

export function uniqueId (prefix: string): string {
  return `${prefix}_${randomUUID().replaceAll('-', '').slice(0, 12)}`
}

/** Any gateway the API reaches: one in this process, or a child (`{ httpUrl: 'http://127.0.0.1:<port>' }`). */
export type ApiTarget = Pick<TestGateway, 'httpUrl'>

/** Creates a principal of the given kind and a key; returns the key's secret. */
export async function createPrincipalWithKey (gw: ApiTarget, id: string, kind: 'device' | 'service' | 'admin' = 'device'): Promise<{ id: string, key: string, keyId: string }> {
  const p = await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/principals', { id, kind })
  if (p.status !== 201) throw new Error(`create principal ${id}: ${p.status} ${JSON.stringify(p.body)}`)
  const k = await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/principals/${id}/keys`, {})
  if (k.status !== 201) throw new Error(`issue key for ${id}: ${k.status} ${JSON.stringify(k.body)}`)
  return { id, key: k.body.key, keyId: k.body.id }
}

export async function createDataset (gw: ApiTarget, id: string, schema: unknown = WEATHER_SCHEMA): Promise<void> {
  const r = await api(gw.httpUrl, ADMIN_KEY, 'POST', '/v1/datasets', { id, schema })
  if (r.status !== 201) throw new Error(`create dataset ${id}: ${r.status} ${JSON.stringify(r.body)}`)
}

/** Replaces every grant on a dataset the way a client should: read the ETag, then PUT with If-Match. */
export async function setGrants (gw: ApiTarget, dataset: string, grants: unknown[]): Promise<void> {
  const current = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${dataset}/access`)
  const etag = current.headers.get('etag')
  if (current.status !== 200 || etag === null) throw new Error(`grants on ${dataset}: GET ${current.status} ${JSON.stringify(current.body)}`)
  const r = await api(gw.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${dataset}/access`, { grants }, { 'if-match': etag })
  if (r.status !== 200) throw new Error(`grants on ${dataset}: ${r.status} ${JSON.stringify(r.body)}`)
}

export function connect (url: string, username: string, password: string, opts: IClientOptions = {}): Promise<MqttClient> {
  return mqtt.connectAsync(url, { username, password, clientId: uniqueId('c'), reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 4, ...opts })
}

/** Connects expecting a refusal; resolves with the CONNACK return code. */
export function connectRefused (url: string, username: string, password: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const c = mqtt.connect(url, { username, password, clientId: uniqueId('c'), reconnectPeriod: 0, connectTimeout: 5000, protocolVersion: 4 })
    c.on('connect', () => { c.end(true); reject(new Error('connection was accepted')) })
    c.on('error', (err: Error & { code?: number }) => { c.end(true); resolve(err.code ?? -1) })
  })
}

/** Resolves when `client` closes (e.g. the broker dropped it), or rejects after `ms`. */
export function closed (client: MqttClient, ms = 3000): Promise<void> {
  return new Promise((resolve, reject) => {
    if (!client.connected) return resolve()
    const t = setTimeout(() => reject(new Error('client still connected')), ms)
    client.once('close', () => { clearTimeout(t); resolve() })
  })
}

export async function waitUntil (cond: () => boolean | Promise<boolean>, ms = 10_000, what = 'condition'): Promise<void> {
  const deadline = Date.now() + ms
  while (!(await cond())) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`)
    await new Promise((resolve) => setTimeout(resolve, 20))
  }
}

export function sleep (ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms))
}

/** SUBSCRIBEs to each filter on its own and returns the SUBACK return code per filter (128 = refused). */
export async function subackCodes (client: MqttClient, filters: readonly string[]): Promise<Record<string, number>> {
  const out: Record<string, number> = {}
  for (const f of filters) {
    try {
      const granted = await client.subscribeAsync(f, { qos: 1 })
      out[f] = granted[0]?.qos ?? -1
    } catch (err) {
      const packet = (err as { packet?: { granted?: number[] } }).packet
      out[f] = packet?.granted?.[0] ?? -1
    }
  }
  return out
}
