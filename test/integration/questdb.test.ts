// Runs against a real QuestDB when QUESTDB_TEST_HTTP (host:port of its HTTP/ILP endpoint, e.g.
// 127.0.0.1:9000) and QUESTDB_TEST_PG (its PGWire URL, e.g. postgres://admin:quest@127.0.0.1:8812/qdb)
// are set; reported as skipped otherwise. QuestDB cannot be installed on the development machines, so
// this suite follows QuestDB's documentation; the sink's failure handling is also covered in CI by
// test/bridges/questdb-sink.test.ts against a scripted endpoint.
import fs from 'node:fs'
import mqtt from 'mqtt'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { createPgExecutor, EmbeddedStore, type SqlExecutor } from '../../bridges/index.js'
import type { Env } from '../../config/index.js'
import {
  ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, sleep, startTestGateway, tmpDataDir, type TestGateway, uniqueId, waitUntil
} from '../helpers.js'
import { querySuite } from '../shared/query-suite.js'
import { killAll, startChild, stopChild } from '../support/child.js'
import { hostPort, TcpProxy } from '../support/tcp-proxy.js'

const HTTP = process.env.QUESTDB_TEST_HTTP
const PG = process.env.QUESTDB_TEST_PG
const enabled = HTTP !== undefined && HTTP !== '' && PG !== undefined && PG !== ''

function qdbEnv (http = HTTP!, pg = PG!): Env {
  const { host, port } = hostPort(http, 9000)
  return { STREAMGATE_QUESTDB: `http::addr=${host}:${port};protocol_version=1`, STREAMGATE_QUESTDB_PG: pg }
}

let sql: SqlExecutor | null = null
const pgq = async (text: string, params: unknown[] = []): Promise<Record<string, unknown>[]> => (await sql!.query(text, params)).rows

/** Waits until QuestDB has applied its WAL and the table shows `rows` rows. */
async function visible (dataset: string, rows: number, ms = 60_000): Promise<void> {
  await waitUntil(async () => {
    // Everything sequenced is applied (a failed wal_tables() query proves nothing), then the count.
    const wal = await pgq('SELECT "writerTxn", "sequencerTxn" FROM wal_tables() WHERE name = $1', [dataset]).catch(() => [])
    if (wal.length === 0 || !wal.every((w) => Number(w.writerTxn) === Number(w.sequencerTxn))) return false
    const n = Number((await pgq(`SELECT count() AS n FROM "${dataset}"`).catch(() => [{ n: -1 }]))[0]?.n)
    return n === rows
  }, ms, `${rows} rows visible in QuestDB table ${dataset}`)
}

/** Waits until QuestDB has applied its WAL for the table and its count is stable. */
async function settled (dataset: string): Promise<void> {
  let last = -1
  await waitUntil(async () => {
    const wal = await pgq('SELECT "writerTxn", "sequencerTxn" FROM wal_tables() WHERE name = $1', [dataset]).catch(() => [])
    const n = Number((await pgq(`SELECT count() AS n FROM "${dataset}"`).catch(() => [{ n: -1 }]))[0]?.n)
    const stable = n === last && wal.length > 0 && wal.every((w) => Number(w.writerTxn) === Number(w.sequencerTxn))
    last = n
    if (!stable) await sleep(500)
    return stable
  }, 120_000, `table ${dataset} to settle`)
}

afterAll(async () => {
  await killAll()
  await sql?.close()
})

querySuite('QuestDB', () => enabled ? qdbEnv() : null, async (gw, dataset, rows) => {
  sql ??= createPgExecutor(PG!, 30_000)
  await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq, 60_000)
  await visible(dataset, rows)
})

describe.skipIf(!enabled)('QuestDB persistence', () => {
  let gw: TestGateway
  beforeAll(async () => {
    sql ??= createPgExecutor(PG!, 30_000)
    gw = await startTestGateway(qdbEnv())
  })
  afterAll(async () => { await gw?.stop() })

  async function device (ds: string): Promise<{ id: string, key: string }> {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query', 'manage'] }])
    return dev
  }

  it('creates one table per dataset from its schema: symbols, types, designated ts, DEDUP keys', async () => {
    const ds = uniqueId('qt')
    await createDataset(gw, ds, { timestamp: 'ts', tags: ['site'], fields: { temp: 'double', count: 'long', ok: 'boolean', note: 'string', at: 'timestamp' } })
    const cols = await pgq(`SELECT "column", "type", "designated", "upsertKey" FROM table_columns('${ds}')`)
    const byName = Object.fromEntries(cols.map((c) => [c.column, c]))
    expect(Object.fromEntries(cols.map((c) => [c.column, c.type]))).toEqual({
      ts: 'TIMESTAMP', device: 'SYMBOL', site: 'SYMBOL', temp: 'DOUBLE', count: 'LONG', ok: 'BOOLEAN', note: 'VARCHAR', at: 'TIMESTAMP', _node: 'SYMBOL', _seq: 'LONG', _idx: 'INT'
    })
    expect(byName.ts!.designated).toBe(true)
    expect(cols.filter((c) => c.upsertKey === true).map((c) => c.column).sort()).toEqual(['_idx', '_node', '_seq', 'ts'])
  })

  it('keeps the rows of two nodes sharing a table apart, though their journals number entries alike', async () => {
    const ds = uniqueId('qn')
    const schema = { timestamp: 'ts', fields: { temp: 'double' } }
    const other = await startTestGateway({ ...qdbEnv(), STREAMGATE_NODE_ID: 'other-node' })
    try {
      for (const node of [gw, other]) {
        await createDataset(node, ds, schema) // each node has its own (embedded) metadata here
        const dev = await createPrincipalWithKey(node, uniqueId('dev'))
        await setGrants(node, ds, [{ principal: dev.id, actions: ['publish'] }])
        const c = await connect(node.mqttUrl, dev.id, dev.key)
        // The same timestamps on both nodes: (ts, _seq, _idx) alone would collide.
        for (let i = 0; i < 100; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ ts: 1_700_000_000_000 + i, temp: i }), { qos: 1 })
        await c.endAsync()
        await node.sg.consumers[0]!.waitFor(node.sg.journal.committedSeq, 60_000)
      }
      await visible(ds, 200)
    } finally {
      await other.stop()
    }
  })

  it('stores readings without timestamps as distinct rows, and writes nothing twice on replay', async () => {
    const ds = uniqueId('qr')
    await createDataset(gw, ds, { fields: { temp: 'double' } })
    const dev = await device(ds)
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    for (let i = 0; i < 200; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: 1 }), { qos: 1 }) // identical payloads, no ts
    await c.endAsync()
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq, 60_000)
    await visible(ds, 200)

    // Replay everything: restart from checkpoint 0 on the same data directory.
    const dataDir = gw.dataDir
    await gw.sg.close()
    const store = await EmbeddedStore.open({ dataDir, rejectsKeep: 10 })
    await store.setCheckpoint('questdb', 0)
    await store.close()
    gw = await startTestGateway(qdbEnv(), dataDir)
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq, 60_000)
    await sleep(3000)
    await visible(ds, 200)
  })

  it('sends rows QuestDB refuses to rejects with its message, without blocking the rows behind them', async () => {
    const ds = uniqueId('qb')
    await createDataset(gw, ds, { fields: { temp: 'double', note: 'string' } })
    // Someone changed the table behind streamgate's back: `note` is now a DOUBLE.
    await pgq(`ALTER TABLE "${ds}" DROP COLUMN "note"`)
    await pgq(`ALTER TABLE "${ds}" ADD COLUMN "note" DOUBLE`)
    const dev = await device(ds)
    const r = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/records`, [
      ...Array.from({ length: 50 }, (_, i) => ({ temp: i })), { temp: 99, note: 'text' }, ...Array.from({ length: 50 }, (_, i) => ({ temp: 100 + i }))
    ])
    expect(r.status).toBe(202)
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq, 60_000)
    await visible(ds, 100)
    await waitUntil(async () => (await api(gw.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/stats`)).body.rejected.store_refused === 1, 10_000, 'the refusal to be counted')
    const rejects = await api(gw.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/rejects`)
    expect(rejects.body.rejects[0].reason).toBe('store_refused')
    expect(rejects.body.rejects[0].detail).toMatch(/note/)
  })
})

describe.skipIf(!enabled)('QuestDB acceptance: 100,000 records over MQTT, QuestDB unreachable for 30 s, one kill -9', () => {
  it('stores every record exactly once', async () => {
    sql ??= createPgExecutor(PG!, 30_000)
    const httpProxy = new TcpProxy(hostPort(HTTP!, 9000))
    const pgTarget = hostPort(PG!, 8812)
    const pgProxy = new TcpProxy(pgTarget)
    await httpProxy.up()
    await pgProxy.up()
    const pgUrl = new URL(PG!)
    pgUrl.hostname = '127.0.0.1'
    pgUrl.port = String(pgProxy.port)
    const env = qdbEnv(`127.0.0.1:${httpProxy.port}`, pgUrl.toString())
    const dataDir = tmpDataDir()
    const ds = uniqueId('qacc')
    const dev = uniqueId('dev')
    const N = 100_000
    try {
      let child = await startChild(dataDir, env)
      let http = `http://127.0.0.1:${child.httpPort}`
      expect((await api(http, ADMIN_KEY, 'POST', '/v1/datasets', { id: ds, schema: { fields: { count: 'long' } } })).status).toBe(201)
      expect((await api(http, ADMIN_KEY, 'POST', '/v1/principals', { id: dev, kind: 'device' })).status).toBe(201)
      const key = (await api(http, ADMIN_KEY, 'POST', `/v1/principals/${dev}/keys`, {})).body.key as string
      expect((await api(http, ADMIN_KEY, 'PUT', `/v1/datasets/${ds}/access`, { grants: [{ principal: dev, actions: ['publish', 'query'] }] }, { 'if-match': '*' })).status).toBe(200)

      const acked = new Set<number>()
      // Publishes [from, to) with 200 in flight; stops early if the connection drops.
      const publish = async (port: number, from: number, to: number, onProgress: (n: number) => void): Promise<void> => {
        const c = await mqtt.connectAsync(`mqtt://127.0.0.1:${port}`, { username: dev, password: key, clientId: uniqueId('c'), reconnectPeriod: 0, protocolVersion: 4 })
        c.on('error', () => undefined)
        const gone = new Promise<void>((resolve) => c.once('close', () => resolve()))
        const inFlight = new Set<Promise<void>>()
        for (let i = from; i < to && c.connected; i++) {
          if (acked.has(i)) continue
          const p: Promise<void> = c.publishAsync(`datasets/${ds}/${dev}`, JSON.stringify({ count: i }), { qos: 1 })
            .then(() => { acked.add(i); onProgress(acked.size) }, () => undefined).finally(() => { inFlight.delete(p) })
          inFlight.add(p)
          if (inFlight.size >= 200) await Promise.race([...inFlight, gone])
        }
        await Promise.race([Promise.all(inFlight), gone])
        c.end(true)
      }

      // Phase 1: QuestDB goes away at 20,000 acknowledged, for 30 s; the gateway is killed at 60,000.
      let outageStarted = 0
      let killed = false
      await publish(child.mqttPort, 0, N, (n) => {
        if (n >= 20_000 && outageStarted === 0) {
          outageStarted = Date.now()
          void httpProxy.down()
          void pgProxy.down()
        }
        if (n >= 60_000 && !killed) {
          killed = true
          child.proc.kill('SIGKILL')
        }
      })
      expect(killed).toBe(true)
      await stopChild(child.proc, 'SIGKILL')

      // Phase 2: restart on the same data directory and publish the rest (and anything not acknowledged).
      child = await startChild(dataDir, env)
      http = `http://127.0.0.1:${child.httpPort}`
      while (acked.size < N) await publish(child.mqttPort, 0, N, () => undefined)
      const wait = 30_000 - (Date.now() - outageStarted)
      if (wait > 0) await sleep(wait)
      await httpProxy.up()
      await pgProxy.up()
      await waitUntil(async () => (await api(http, ADMIN_KEY, 'GET', '/v1/status')).body.consumers[0].lag === 0, 120_000, 'QuestDB to catch up')
      await settled(ds)
      const [row] = await pgq(`SELECT count() AS total, count_distinct("count") AS n FROM "${ds}"`)
      // Every record is there. Replays (the outage, the kill) added no row: DEDUP keys. The only extra
      // rows allowed are messages the device re-sent because the kill cut them off before their PUBACK
      // (QoS 1 is at least once from the device's side): at most the 200 it had in flight.
      expect(Number(row!.n)).toBe(N)
      expect(Number(row!.total) - N).toBeLessThanOrEqual(200)
      expect(await stopChild(child.proc, 'SIGTERM')).toBe(0)
    } finally {
      await httpProxy.down()
      await pgProxy.down()
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }, 600_000)
})
