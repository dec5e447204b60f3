// The embedded store's writes through DuckDB's appender: every column type comes back exactly as it
// went in (strings that would need quoting in text formats included), absent values stay absent
// (booleans read as false), and
// a write that fails leaves neither rows nor a moved checkpoint.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { RecordStore } from '../../bridges/index.js'
import { tableName, type Dataset, type Row, type SinkEntry } from '../../gateway/index.js'
import { planQuery } from '../../gateway/query.js'
import { waitUntil } from '../helpers.js'

const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-store-'))

/** Puts `wrap` around the statements that change a store's DuckDB memory limit (`run`: the real one). */
function onLimitChange (store: RecordStore, wrap: (sql: string, run: (sql: string) => Promise<unknown>) => Promise<unknown>): void {
  const conn = (store as unknown as { limits: { conn: { run: (sql: string) => Promise<unknown> } } }).limits.conn
  const run = conn.run.bind(conn)
  conn.run = (sql) => wrap(sql, run)
}
let store: RecordStore

const ds = {
  id: 'kinds',
  version: 1,
  schema: { tags: ['site'], fields: { s: 'string', n: 'long', d: 'double', b: 'boolean', at: 'timestamp' } }
} as unknown as Dataset

function entry (seq: number, rows: Row[]): SinkEntry {
  return { seq, dataset: ds.id, version: 1, device: 'dev-1', payload: Buffer.from(JSON.stringify(rows)), rows }
}

beforeAll(async () => {
  store = await RecordStore.open({ dataDir: dir, memoryLimit: '128MB' })
  await store.prepareDataset(ds)
})

afterAll(async () => {
  await store.close()
  fs.rmSync(dir, { recursive: true, force: true })
})

describe('embedded store', () => {
  it('stores every column type exactly, and absent values as absent (booleans read as false)', async () => {
    const t0 = 1_700_000_000_000_000
    const rows: Row[] = [
      { ts: t0, device: 'dev-1', site: 'a,"b"\nc', s: 'quote " comma , newline \n tab \t', n: 2 ** 53 - 1, d: 1e-300, b: true, at: t0 + 1 },
      { ts: t0 + 1, device: 'dev-1', site: '', s: 'ünïcødé ✓ 😀', n: -(2 ** 53 - 1), d: -0.5, b: false, at: 0 },
      { ts: t0 + 2, device: 'dev-1' }
    ]
    // More rows than one DuckDB vector (2,048), over two entries.
    const many: Row[] = Array.from({ length: 5000 }, (_, i) => ({ ts: t0 + 10 + i, device: 'dev-1', n: i, d: i / 4 }))
    await store.write([entry(1, rows), entry(2, many)], 2)
    expect(await store.checkpoint()).toBe(2)
    expect((await store.stats(ds)).stored).toBe(5003)
    const back = await store.latest(ds, { from: t0, to: t0 + 3, limit: 10 })
    // An absent boolean reads back as false (as on QuestDB, which has no NULL boolean; README).
    expect(back.reverse()).toEqual([rows[0], rows[1], { ...rows[2], b: false }])
    const tail = await store.latest(ds, { from: t0 + 10, to: null, limit: 5000 })
    expect(tail.reverse()).toEqual(many.map((r) => ({ ...r, b: false })))
  })

  it('leaves no rows and the checkpoint where it was when a write fails', async () => {
    const before = (await store.stats(ds)).stored
    const bad = [{ ts: 1_700_000_000_000_000, device: 'dev-1', n: 1 }, { device: 'dev-1', n: 2 } as unknown as Row]
    await expect(store.write([entry(3, bad)], 3)).rejects.toThrow(/NOT NULL/)
    expect(await store.checkpoint()).toBe(2)
    expect((await store.stats(ds)).stored).toBe(before)
    // The store still takes writes afterwards.
    await store.write([entry(3, [bad[0]!])], 3)
    expect(await store.checkpoint()).toBe(3)
    expect((await store.stats(ds)).stored).toBe(before + 1)
  })

  it('writes rows across chunks and entries with nothing carried from one chunk to the next', async () => {
    // The appender's chunk (2,048 rows) is reused: a value set in one chunk must not show through an
    // absent one at the same position in the next. Entries cross chunk boundaries mid-entry.
    const t0 = 1_800_000_000_000_000
    let k = 0
    const rowsOf = (n: number): Row[] => Array.from({ length: n }, () => {
      const i = k++
      const even = Math.floor(i / 2048) % 2 === 0
      return even ? { ts: t0 + i, device: 'dev-1', n: i, s: 'v' + i, site: 'x' } : { ts: t0 + i, device: 'dev-1', d: i / 2, b: true, at: t0 - i }
    })
    const batches = [rowsOf(1000), rowsOf(3000), rowsOf(1500)]
    const before = (await store.stats(ds)).stored
    await store.write(batches.map((rows, b) => entry(10 + b, rows)), 12)
    expect((await store.stats(ds)).stored).toBe(before + 5500)
    const back = (await store.latest(ds, { from: t0, to: null, limit: 10_000 })).reverse()
    expect(back).toEqual(batches.flat().map((r) => ({ b: false, ...r })))
  })

  it('keeps STREAMGATE_STORE_CACHE while no query runs, and gives queries STREAMGATE_STORE_MEMORY', async () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-store-cache-'))
    const small = await RecordStore.open({ dataDir: d, memoryLimit: '512MB', cacheLimit: '8MB' })
    try {
      await small.prepareDataset(ds)
      const db = (small as unknown as { db: { writer: { run: (sql: string) => Promise<unknown> }, rows: (sql: string) => Promise<unknown[][]> } }).db
      const limit = async (): Promise<number> => Number((await db.rows("SELECT current_setting('memory_limit')"))[0]![0]!.toString().replace(/ MiB$/, ''))
      expect(await limit()).toBeLessThanOrEqual(8)
      // 1M rows in 500k groups: the aggregate's hash table needs far more than 8MB.
      await db.writer.run(`INSERT INTO data."${tableName(ds.id, 1)}" (_seq, _idx, ts, device, site, d)
        SELECT i, 0, make_timestamp(1700000000000000 + i), 'dev-1', 'site-' || (i % 500000), i FROM range(1000000) t(i)`)
      const plan = planQuery(ds, { groupBy: ['site'], aggregate: { d: ['avg', 'min', 'max', 'count', 'first', 'last'] }, limit: 10 }, { maxRows: 10_000 })
      // A slow limit change (a busy threadpool): the second query must wait for the raise too.
      onLimitChange(small, async (sql, run) => { await new Promise((resolve) => setTimeout(resolve, 300)); return await run(sql) })
      const [a, b] = await Promise.all([small.query(plan, 30_000), small.query(plan, 30_000)])
      expect(a.rows).toHaveLength(10)
      expect(b.rows).toEqual(a.rows)
      await (small as unknown as { limitChange: Promise<void> }).limitChange // lowered once the last query ended
      expect(await limit()).toBeLessThanOrEqual(8)
    } finally {
      await small.close()
      fs.rmSync(d, { recursive: true, force: true })
    }
  })

  it('tries a lowering DuckDB could not make again, so the cache does not stay at the query limit', async () => {
    const d = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-store-cache-'))
    const small = await RecordStore.open({ dataDir: d, memoryLimit: '512MB', cacheLimit: '16MB' })
    try {
      await small.prepareDataset(ds)
      const db = (small as unknown as { db: { rows: (sql: string) => Promise<unknown[][]> } }).db
      const limit = async (): Promise<string> => String((await db.rows("SELECT current_setting('memory_limit')"))[0]![0])
      // The first lowering fails, as when what the sink's transaction holds does not fit.
      let failed = 0
      onLimitChange(small, async (sql, run) => {
        if (/16MB/.test(sql) && failed++ === 0) throw new Error('Out of Memory Error: could not free up enough memory for the new limit')
        return await run(sql)
      })
      await small.latest(ds, { from: null, to: null, limit: 1 })
      await (small as unknown as { limitChange: Promise<void> }).limitChange
      expect(failed).toBe(1)
      expect(await limit()).toMatch(/^4\d\d\.\d MiB$/) // still 512MB (488.2 MiB)
      await waitUntil(async () => /^15\.\d MiB$/.test(await limit()), 8000, 'the lowering, tried again')
    } finally {
      await small.close()
      fs.rmSync(d, { recursive: true, force: true })
    }
  })
})
