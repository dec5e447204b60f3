// /metrics parses as Prometheus text and its counters agree with what the test sent; /healthz and
// /readyz; the audit log records changes (with ETags before and after) and denials, and its hash
// chain verification finds a tampered entry.
import fs from 'node:fs'
import path from 'node:path'
import { Writable } from 'node:stream'
import mqtt from 'mqtt'
import { pino } from 'pino'
import { startStreamgate } from '../../bin/app.js'
import { loadConfig } from '../../config/index.js'
import { DuckDBInstance } from '@duckdb/node-api'
import parsePrometheusTextFormat from 'parse-prometheus-text-format'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, testEnv, tmpDataDir, uniqueId } from '../helpers.js'

interface Family { name: string, type: string, help: string, metrics: { labels?: Record<string, string>, value?: string, buckets?: Record<string, string>, count?: string }[] }

let lastText = ''

async function scrape (gw: TestGateway): Promise<Map<string, Family>> {
  const r = await fetch(`${gw.httpUrl}/metrics`)
  expect(r.status).toBe(200)
  expect(r.headers.get('content-type')).toMatch(/^text\/plain; version=0\.0\.4/)
  const text = await r.text()
  lastText = text
  // promtool's checks: every family has HELP and TYPE, names and labels are well formed, no duplicates.
  const families = parsePrometheusTextFormat(text) as Family[]
  const seen = new Set<string>()
  for (const f of families) {
    expect(f.name).toMatch(/^[a-zA-Z_:][a-zA-Z0-9_:]*$/)
    expect(f.help.length).toBeGreaterThan(0)
    expect(['COUNTER', 'GAUGE', 'HISTOGRAM', 'SUMMARY', 'UNTYPED']).toContain(f.type)
    if (f.type === 'COUNTER') expect(f.name).toMatch(/_total$/)
    expect(seen.has(f.name)).toBe(false)
    seen.add(f.name)
    const series = new Set<string>()
    for (const m of f.metrics) {
      for (const k of Object.keys(m.labels ?? {})) expect(k).toMatch(/^[a-zA-Z_][a-zA-Z0-9_]*$/)
      const key = JSON.stringify(m.labels ?? {})
      expect(series.has(key)).toBe(false)
      series.add(key)
    }
  }
  return new Map(families.map((f) => [f.name, f]))
}

function value (m: Map<string, Family>, name: string, labels: Record<string, string> = {}): number {
  const f = m.get(name)
  if (f === undefined) return 0
  const s = f.metrics.find((x) => Object.entries(labels).every(([k, v]) => x.labels?.[k] === v))
  return s === undefined ? 0 : Number(s.value ?? s.count)
}

let gw: TestGateway
beforeAll(async () => { gw = await startTestGateway() })
afterAll(async () => { await gw?.stop() })

describe('metrics', () => {
  it('parse as Prometheus text, and count what was sent', async () => {
    const ds = uniqueId('m')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    const before = await scrape(gw)
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    try {
      for (let i = 0; i < 25; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: i }), { qos: 1 })
      await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify([{ n: 1 }, { n: 2 }, { n: 3 }]), { qos: 1 })
      for (let i = 0; i < 4; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 'x' }), { qos: 1 })
      await c.publishAsync(`datasets/${ds}/${dev.id}`, '{not json', { qos: 1 })
      const after = await scrape(gw)
      expect(value(after, 'streamgate_messages_received_total', { dataset: ds })).toBe(31)
      expect(value(after, 'streamgate_messages_accepted_total', { dataset: ds })).toBe(26)
      expect(value(after, 'streamgate_records_accepted_total', { dataset: ds })).toBe(28)
      expect(value(after, 'streamgate_records_rejected_total', { dataset: ds, reason: 'wrong_type' })).toBe(4)
      expect(value(after, 'streamgate_records_rejected_total', { dataset: ds, reason: 'invalid_json' })).toBe(1)
      expect(value(after, 'streamgate_mqtt_sessions')).toBe(value(before, 'streamgate_mqtt_sessions') + 1)
      expect(value(after, 'streamgate_mqtt_connects_total') - value(before, 'streamgate_mqtt_connects_total')).toBe(1)
      expect(value(after, 'streamgate_journal_committed_seq')).toBe(gw.sg.journal.committedSeq)
      expect(value(after, 'streamgate_journal_healthy')).toBe(1)
      expect(after.get('streamgate_consumer_lag_records')?.metrics.map((m) => m.labels?.consumer)).toEqual(['embedded'])
      // (the parser drops histogram labels: read these from the text)
      expect(lastText).toMatch(/^streamgate_http_request_duration_seconds_count\{method="PUT",route="\/v1\/datasets\/\{id\}\/access",status="200"\} [1-9]/m)
      expect(value(after, 'streamgate_process_resident_memory_bytes')).toBeGreaterThan(0)
      // Labels stay bounded: no device or client id appears anywhere.
      for (const f of after.values()) for (const m of f.metrics) expect(JSON.stringify(m.labels ?? {})).not.toContain(dev.id)
    } finally {
      await c.endAsync()
    }
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    await scrape(gw)
    expect(lastText).toMatch(/^streamgate_sink_write_duration_seconds_count\{sink="embedded"\} [1-9]/m)
  })

  it('sends security headers, and no CORS headers unless origins are configured', async () => {
    const r = await fetch(`${gw.httpUrl}/v1/datasets`, { headers: { authorization: `Bearer ${ADMIN_KEY}`, origin: 'https://app.example' } })
    expect(r.headers.get('x-content-type-options')).toBe('nosniff')
    expect(r.headers.get('content-security-policy')).toMatch(/default-src 'self'/)
    expect(r.headers.get('x-powered-by')).toBeNull()
    expect(r.headers.get('access-control-allow-origin')).toBeNull()
    const withCors = await startTestGateway({ STREAMGATE_CORS_ORIGINS: 'https://app.example' })
    try {
      const ok = await fetch(`${withCors.httpUrl}/v1/datasets`, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'GET' } })
      expect(ok.headers.get('access-control-allow-origin')).toBe('https://app.example')
      const other = await fetch(`${withCors.httpUrl}/v1/datasets`, { method: 'OPTIONS', headers: { origin: 'https://evil.example', 'access-control-request-method': 'GET' } })
      expect(other.headers.get('access-control-allow-origin')).toBeNull()
    } finally {
      await withCors.stop()
    }
  })

  it('/healthz and /readyz answer without credentials', async () => {
    expect((await api(gw.httpUrl, null, 'GET', '/healthz')).body).toEqual({ status: 'ok', journal: 'ok' })
    expect((await api(gw.httpUrl, null, 'GET', '/readyz')).body).toEqual({ ready: true, checks: { listeners: true, journal: true, sinkThread: true, 'sink:embedded': true } })
  })
})

describe('request logs', () => {
  it('carry a request id and never a key', async () => {
    const lines: string[] = []
    const sink = new Writable({ write (chunk: Buffer, _enc, cb) { lines.push(chunk.toString()); cb() } })
    const dir = tmpDataDir()
    const sg = await startStreamgate(loadConfig(testEnv(dir)), { log: pino({ level: 'debug' }, sink) })
    try {
      const base = `http://127.0.0.1:${sg.addresses.http.port}`
      const r1 = await fetch(`${base}/v1/datasets`, { headers: { authorization: `Bearer ${ADMIN_KEY}`, 'x-request-id': 'trace-me-123' } })
      expect(r1.headers.get('x-request-id')).toBe('trace-me-123')
      const r2 = await fetch(`${base}/v1/datasets`, { headers: { 'x-api-key': 'sg_a_wrong_key_to_keep_out_of_logs' } })
      expect(r2.status).toBe(401)
      const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${sg.addresses.mqtt.port}`, { username: 'admin', password: 'sg_a_wrong_mqtt_password', reconnectPeriod: 0 }).catch(() => null)
      await c?.endAsync()
      const text = lines.join('')
      expect(text).toContain('"id":"trace-me-123"')
      expect(text).toMatch(/"req":\{"id":"[0-9a-f-]{36}"/)
      expect(text).not.toContain(ADMIN_KEY)
      expect(text).not.toContain('sg_a_wrong_key_to_keep_out_of_logs')
      expect(text).not.toContain('sg_a_wrong_mqtt_password')
      expect(text).toContain('[redacted]')
    } finally {
      await sg.close()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('audit log', () => {
  it('records changes with ETags and denials, and verifies its chain', async () => {
    const ds = uniqueId('a')
    await createDataset(gw, ds)
    const outsider = await createPrincipalWithKey(gw, uniqueId('outsider'))
    const etag = (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}`)).headers.get('etag')
    const upd = await api(gw.httpUrl, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}`, { description: 'audited' }, { 'if-match': etag! })
    expect((await api(gw.httpUrl, outsider.key, 'GET', `/v1/datasets/${ds}`)).status).toBe(403)
    expect((await api(gw.httpUrl, 'sg_not_a_key', 'GET', '/v1/datasets')).status).toBe(401)

    const entries = (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/audit?resource=datasets/${ds}`)).body.entries as Record<string, unknown>[]
    const update = entries.find((e) => e.action === 'dataset.update')!
    expect(update).toMatchObject({ actor: 'admin', outcome: 'ok', before: etag, after: upd.headers.get('etag'), resource: `datasets/${ds}` })
    expect(update.address).toMatch(/127\.0\.0\.1/)
    expect(update.requestId).toMatch(/^[0-9a-f-]{36}$/)
    expect(entries.find((e) => e.outcome === 'denied')).toMatchObject({ actor: outsider.id, action: 'access.denied' })
    const denied = await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/audit?outcome=denied&action=auth.failed&limit=5')
    expect(denied.body.entries[0], JSON.stringify(denied.body)).toMatchObject({ actor: null, outcome: 'denied' })

    // Keyset pages: newest first, no entry twice.
    const page1 = (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/audit?limit=3')).body
    const page2 = (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/audit?limit=3&cursor=${page1.next}`)).body
    expect(page2.entries[0].seq).toBe(page1.entries[2].seq - 1)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/audit/verify')).body).toMatchObject({ ok: true, firstBroken: null })
  })

  it('records denied MQTT subscriptions and publishes', async () => {
    const ds = uniqueId('mq')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    try {
      const granted = await c.subscribeAsync('#', { qos: 1 }).catch(() => [{ qos: 128 }])
      expect(granted[0]?.qos).toBe(128)
      const gone = new Promise<void>((resolve) => c.once('close', () => resolve()))
      c.publish(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 1 }), { qos: 1 })
      await gone
    } finally {
      await c.endAsync(true)
    }
    const entries = (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/audit?actor=${dev.id}&outcome=denied`)).body.entries as { action: string, resource: string }[]
    expect(entries.map((e) => `${e.action} ${e.resource}`)).toEqual(expect.arrayContaining(['mqtt.subscribe mqtt/filter/#', `mqtt.publish datasets/${ds}`]))
  })

  it('finds the first broken link when a stored entry was changed', async () => {
    const dir = tmpDataDir()
    let g = await startTestGateway({}, dir)
    for (let i = 0; i < 5; i++) await createDataset(g, uniqueId('t'))
    const before = (await api(g.httpUrl, ADMIN_KEY, 'GET', '/v1/audit/verify')).body
    expect(before.ok).toBe(true)
    await g.sg.close()
    // Someone edits the history behind the gateway's back.
    const db = await DuckDBInstance.create(path.join(dir, 'store.duckdb'))
    const conn = await db.connect()
    await conn.run("UPDATE sg_audit SET actor = 'someone-else' WHERE seq = 4")
    conn.closeSync()
    db.closeSync()
    g = await startTestGateway({}, dir)
    try {
      const after = (await api(g.httpUrl, ADMIN_KEY, 'GET', '/v1/audit/verify')).body
      expect(after).toMatchObject({ ok: false, firstBroken: { seq: 4, reason: 'hash does not match the entry\'s fields' } })
    } finally {
      await g.stop()
    }
  })
})
