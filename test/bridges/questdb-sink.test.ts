// The QuestDB sink against a scripted /write endpoint: retries, timeouts, the breaker, 4xx isolation
// and replay from the journal. (The real-QuestDB suite is test/integration/questdb.test.ts.)
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { EmbeddedStore, QuestdbSink, senderConfig, type SqlExecutor, type StoreRefusal } from '../../bridges/index.js'
import { Catalog, type Dataset, datasetSchemaSchema, Journal, type Row, SinkConsumer } from '../../gateway/index.js'
import { ScriptedQuestdb } from '../support/scripted-questdb.js'
import { waitUntil } from '../helpers.js'

/**
 * Records the SQL statements, and keeps the tables they make as QuestDB would: CREATE TABLE IF NOT
 * EXISTS, ALTER TABLE ... ADD COLUMN (which fails for a column that is there, as on a WAL table before
 * QuestDB 8.3.2) and DEDUP ENABLE; table_columns() answers from them.
 */
class RecordingSql implements SqlExecutor {
  readonly statements: string[] = []
  readonly tables = new Map<string, { column: string, type: string, upsertKey: boolean }[]>()
  /** Columns added but not applied yet (WAL): table_columns() does not show them, ADD COLUMN refuses them. */
  readonly unapplied = new Set<string>()
  failing = false
  async query (sql: string): Promise<{ rows: Record<string, unknown>[] }> {
    if (this.failing) throw new Error('connect ECONNREFUSED 127.0.0.1:8812')
    this.statements.push(sql)
    let m = /^CREATE TABLE IF NOT EXISTS "(\w+)" \((.*)\) TIMESTAMP.* UPSERT KEYS\((.*)\)$/.exec(sql)
    if (m !== null) {
      const keys = m[3]!.split(', ')
      if (!this.tables.has(m[1]!)) this.tables.set(m[1]!, m[2]!.split(', ').map((d) => { const [c, type] = d.split(' ') as [string, string]; const column = c.slice(1, -1); return { column, type, upsertKey: keys.includes(column) } }))
      return { rows: [] }
    }
    m = /^SELECT "column", "type", "upsertKey" FROM table_columns\('(\w+)'\)$/.exec(sql)
    if (m !== null) return { rows: this.tables.get(m[1]!) ?? [] }
    m = /^ALTER TABLE "(\w+)" ADD COLUMN "(\w+)" (\w+)$/.exec(sql)
    if (m !== null) {
      const t = this.tables.get(m[1]!)!
      if (this.unapplied.has(m[2]!)) throw new Error(`column '${m[2]}' already exists`)
      if (t.some((c) => c.column === m![2])) throw new Error(`statements containing multiple transactions, such as 'alter table add column col1, col2' are currently not supported for WAL tables [table=${m[1]}]`)
      t.push({ column: m[2]!, type: m[3]!, upsertKey: false })
      return { rows: [] }
    }
    m = /^ALTER TABLE "(\w+)" DEDUP ENABLE UPSERT KEYS\((.*)\)$/.exec(sql)
    if (m !== null) {
      const keys = m[2]!.split(', ')
      for (const c of this.tables.get(m[1]!)!) c.upsertKey = keys.includes(c.column)
    }
    return { rows: [] }
  }

  async close (): Promise<void> {}
}

const ds: Dataset = {
  id: 'readings', description: '', version: 1, createdAt: '', updatedAt: '',
  schema: datasetSchemaSchema.parse({ timestamp: 'ts', tags: ['site'], fields: { temp: 'double', count: 'long', ok: 'boolean', note: 'string', at: 'timestamp' } })
}

interface Rig {
  server: ScriptedQuestdb
  sql: RecordingSql
  sink: QuestdbSink
  consumer: SinkConsumer
  journal: Journal
  store: EmbeddedStore
  refused: StoreRefusal[]
  append: (n: number, note?: (i: number) => string) => Promise<void>
  close: () => Promise<void>
}

const rigs: Rig[] = []
afterEach(async () => { for (const r of rigs.splice(0)) await r.close() })

async function rig (opts: { timeoutMs?: number, resetMs?: number, sqlFailing?: boolean, tables?: RecordingSql['tables'] } = {}): Promise<Rig> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-qdb-'))
  const server = new ScriptedQuestdb()
  await server.start()
  const sql = new RecordingSql()
  sql.failing = opts.sqlFailing ?? false
  for (const [name, cols] of opts.tables ?? []) sql.tables.set(name, cols)
  const store = await EmbeddedStore.open({ dataDir: dir, rejectsKeep: 100 })
  const refused: StoreRefusal[] = []
  const sink = new QuestdbSink({ ilp: server.ilp, sql, checkpoints: store, onRefused: (r) => refused.push(...r), timeoutMs: opts.timeoutMs ?? 1000, resetMs: opts.resetMs ?? 200, nodeId: 'node-t' })
  await sink.prepareDataset(ds)
  const catalog = catalogWith(ds)
  const { journal } = await Journal.open({ dir: path.join(dir, 'journal'), maxBytes: 1 << 30, segmentBytes: 1 << 20 })
  const consumer = new SinkConsumer(journal, sink, catalog, { maxEntries: 50, maxRows: 100, retryMinMs: 20, retryMaxMs: 100 })
  await consumer.start()
  let n = 0
  const r: Rig = {
    server, sql, sink, consumer, journal, store, refused,
    async append (count, note = () => 'fine') {
      await Promise.all(Array.from({ length: count }, () => {
        const i = n++
        const rows: Row[] = [
          { ts: 1_700_000_000_000_000 + i * 1000, device: `d${i % 3}`, site: 's1', temp: i / 2, count: i, ok: i % 2 === 0, note: note(i), at: 1_700_000_000_000_000 + i },
          { ts: 1_700_000_000_000_000 + i * 1000, device: `d${i % 3}`, temp: -i }
        ]
        const payload = Buffer.from(JSON.stringify([{ ts: rows[0]!.ts / 1000, site: 's1', temp: i / 2, count: i, ok: i % 2 === 0, note: note(i), at: (rows[0]!.at as number) / 1000 }, { ts: rows[1]!.ts / 1000, temp: -i }]))
        return new Promise<void>((resolve, reject) => journal.append({ arrivalUs: 1, dataset: ds.id, version: 1, device: `d${i % 3}`, principal: 'p', payload }, (err) => err === null ? resolve() : reject(err)))
      }))
    },
    async close () {
      await consumer.close()
      await sink.close()
      await journal.close()
      await server.stop()
      await store.close()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }
  rigs.push(r)
  return r
}

function catalogWith (d: Dataset): Catalog {
  const c = new Catalog({ maxBatch: 1000, maxString: 1000 })
  c.put(d)
  return c
}

const allKeys = (entries: number): string[] => Array.from({ length: entries }, (_, i) => [`readings/${i + 1}/0`, `readings/${i + 1}/1`]).flat()

describe('QuestDB sink', () => {
  it('creates the table from the schema with DEDUP keys, and writes every row with _node, _seq, _idx and µs timestamps', async () => {
    const r = await rig()
    expect(r.sql.statements).toEqual([
      'CREATE TABLE IF NOT EXISTS "readings" ("ts" TIMESTAMP, "device" SYMBOL, "site" SYMBOL, "temp" DOUBLE, "count" LONG, "ok" BOOLEAN, "note" VARCHAR, "at" TIMESTAMP, "_node" SYMBOL, "_seq" LONG, "_idx" INT) TIMESTAMP(ts) PARTITION BY DAY WAL DEDUP UPSERT KEYS(ts, _node, _seq, _idx)',
      // A new table has every column and its keys: nothing to alter.
      'SELECT "column", "type", "upsertKey" FROM table_columns(\'readings\')'
    ])
    await r.append(120)
    await r.consumer.waitFor(120)
    expect([...r.server.keys()].sort()).toEqual(allKeys(120).sort())
    expect(await r.store.getCheckpoint('questdb')).toBe(120)
    const first = r.server.accepted.find((x) => x.seq === 1 && x.idx === 0)!.line
    // symbols first, then typed columns; designated timestamp in ns (protocol v1 sends nanoseconds)
    expect(first).toBe('readings,device=d0,_node=node-t,site=s1 temp=0,count=0i,ok=t,note="fine",at=1700000000000000t,_seq=1i,_idx=0i 1700000000000000000')
    expect(r.sink.breaker().state).toBe('closed')
  })

  it('retries through 500s, opens the breaker, closes it after recovery, and loses nothing', async () => {
    const r = await rig({ resetMs: 150 })
    r.server.mode = 'error500'
    await r.append(30)
    let sawOpen = false
    await waitUntil(() => { sawOpen ||= r.sink.breaker().state === 'open'; return sawOpen }, 5000, 'breaker open')
    expect(r.consumer.lag).toBe(30)
    // the client retries 5xx itself until retry_timeout, then gives up with a timeout
    expect(r.consumer.lastError).toMatch(/500|Breaker is open|timeout/)
    r.server.mode = 'ok'
    await r.consumer.waitFor(30, 10_000)
    expect([...r.server.keys()].sort()).toEqual(allKeys(30).sort())
    expect(r.sink.breaker().state).toBe('closed')
    // Every change counted as it happened (for /metrics), however briefly a state lasted.
    const t = r.sink.breaker().transitions
    expect(t.open).toBeGreaterThanOrEqual(1)
    expect(t['half-open']).toBeGreaterThanOrEqual(1)
    expect(t.closed).toBeGreaterThanOrEqual(1)
    expect(t.open).toBe(t['half-open'])
  })

  it('gives up on a hanging flush after the timeout, never reuses that Sender, and catches up', async () => {
    const r = await rig({ timeoutMs: 300, resetMs: 100 })
    r.server.mode = 'hang'
    await r.append(10)
    await waitUntil(() => r.consumer.failures >= 1, 5000, 'a timed-out flush')
    expect(r.consumer.lastError).toMatch(/[Tt]imed out|timeout/)
    // Flushes that keep hanging open the breaker (timeouts count as failures).
    await waitUntil(() => r.sink.breaker().transitions.open >= 1, 10_000, 'the breaker to open on hangs')
    r.server.mode = 'ok'
    r.server.releaseHung()
    await r.consumer.waitFor(10, 10_000)
    expect([...r.server.keys()].sort()).toEqual(allKeys(10).sort())
  })

  it('sends a batch QuestDB committed but answered too late again with the same rows, so DEDUP keeps one copy', async () => {
    const r = await rig({ timeoutMs: 300, resetMs: 100 })
    r.server.mode = 'late'
    r.server.lateMs = 600
    await r.append(10)
    await waitUntil(() => r.consumer.failures >= 1, 5000, 'a flush timed out after QuestDB committed it')
    r.server.mode = 'ok'
    await r.consumer.waitFor(10, 10_000)
    // The same keys arrived more than once (the late commit, then the retry) ...
    expect(r.server.accepted.length).toBeGreaterThan(r.server.keys().size)
    // ... each time as the same line, so QuestDB's DEDUP UPSERT KEYS leave exactly one row per key.
    const lines = new Map<string, Set<string>>()
    for (const a of r.server.accepted) {
      const k = `${a.table}/${a.seq}/${a.idx}`
      lines.set(k, (lines.get(k) ?? new Set()).add(a.line))
    }
    expect([...lines.values()].filter((l) => l.size > 1)).toEqual([])
    expect([...r.server.keys()].sort()).toEqual(allKeys(10).sort())
  })

  it('holds the data while QuestDB refuses connections and replays it from the journal when it is back', async () => {
    const r = await rig({ resetMs: 100 })
    const port = r.server.port
    await r.server.stop()
    await r.append(25)
    await waitUntil(() => r.consumer.failures >= 2, 5000, 'refused connections')
    expect(r.consumer.checkpoint).toBe(0)
    await r.append(25) // ingestion is not blocked
    await r.server.start(port)
    await r.consumer.waitFor(50, 10_000)
    expect([...r.server.keys()].sort()).toEqual(allKeys(50).sort())
  })

  it('isolates rows QuestDB refuses with 400, reports them with its message, and writes the rest', async () => {
    const r = await rig()
    r.server.mode = 'reject-marked'
    await r.append(40, (i) => i === 7 || i === 31 ? 'REFUSE_ME' : 'fine')
    await r.consumer.waitFor(40, 10_000)
    expect(r.refused.map((x) => `${x.seq}/${x.idx}`).sort()).toEqual(['32/0', '8/0'])
    expect(r.refused[0]!.detail).toContain('cast error from protocol type: STRING to column type: DOUBLE')
    expect(r.refused[0]!.reason).toBe('store_refused')
    const expected = allKeys(40).filter((k) => k !== 'readings/8/0' && k !== 'readings/32/0')
    expect([...r.server.keys()].sort()).toEqual(expected.sort())
    expect(r.sink.breaker().state).toBe('closed') // bad data does not open the breaker
  })

  it('replays identical rows after a crash between flush and checkpoint, so DEDUP keeps one copy', async () => {
    const r = await rig()
    await r.append(5)
    await r.consumer.waitFor(5)
    const before = r.server.accepted.length
    // A restart from an older checkpoint: the same journal entries are sent again.
    await r.consumer.close()
    await r.store.setCheckpoint('questdb', 0)
    const again = new SinkConsumer(r.journal, r.sink, catalogWith(ds), { maxEntries: 50, maxRows: 100 })
    await again.start()
    await again.waitFor(5)
    await again.close()
    const lines = r.server.accepted.map((x) => x.line)
    expect(lines.length).toBe(before * 2)
    expect(lines.slice(before)).toEqual(lines.slice(0, before))
    expect(r.server.keys().size).toBe(10)
  })

  it('adds only the missing columns and keys to a table an older streamgate made, and alters nothing on the next start', async () => {
    // Made before `_node` and before the schema's `at`; `note` retyped behind streamgate's back.
    const old = [['ts', 'TIMESTAMP', true], ['device', 'SYMBOL', false], ['site', 'SYMBOL', false], ['temp', 'DOUBLE', false], ['count', 'LONG', false],
      ['ok', 'BOOLEAN', false], ['note', 'STRING', false], ['_seq', 'LONG', true], ['_idx', 'INT', true]] as const
    const r = await rig({ tables: new Map([['readings', old.map(([column, type, upsertKey]) => ({ column, type, upsertKey }))]]) })
    expect(r.sql.statements.slice(1)).toEqual([
      'SELECT "column", "type", "upsertKey" FROM table_columns(\'readings\')',
      'ALTER TABLE "readings" ADD COLUMN "at" TIMESTAMP',
      'ALTER TABLE "readings" ADD COLUMN "_node" SYMBOL',
      'ALTER TABLE "readings" DEDUP ENABLE UPSERT KEYS(ts, _node, _seq, _idx)'
    ])
    await r.append(5)
    await r.consumer.waitFor(5)
    expect(r.server.keys().size).toBe(10)
    // The next start finds everything in place (the retyped column stays as it is, logged).
    const before = r.sql.statements.length
    await r.sink.prepareDataset(ds)
    expect(r.sql.statements.slice(before).filter((s) => s.startsWith('ALTER'))).toEqual([])
  })

  it('takes a column added a moment ago but not applied yet (WAL) as there', async () => {
    const cols = [['ts', 'TIMESTAMP', true], ['device', 'SYMBOL', false], ['site', 'SYMBOL', false], ['temp', 'DOUBLE', false], ['count', 'LONG', false],
      ['ok', 'BOOLEAN', false], ['note', 'VARCHAR', false], ['_node', 'SYMBOL', true], ['_seq', 'LONG', true], ['_idx', 'INT', true]] as const
    const sql = new RecordingSql()
    sql.tables.set('readings', cols.map(([column, type, upsertKey]) => ({ column, type, upsertKey })))
    sql.unapplied.add('at')
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-qdb-'))
    const store = await EmbeddedStore.open({ dataDir: dir, rejectsKeep: 100 })
    const warnings: string[] = []
    const log = { warn: (_o: unknown, msg: string) => { warnings.push(msg) } }
    const sink = new QuestdbSink({ ilp: 'http::addr=127.0.0.1:9;', sql, checkpoints: store, onRefused: () => undefined, timeoutMs: 1000, resetMs: 200, nodeId: 'node-t', log: log as never })
    try {
      await sink.prepareDataset(ds)
      expect(sql.statements.at(-1)).toBe('ALTER TABLE "readings" ADD COLUMN "at" TIMESTAMP')
      expect(warnings).toEqual([]) // the table counts as prepared
      // Prepared: nothing is left to do before the first write.
      const n = sql.statements.length
      await sink.prepareDataset(ds)
      expect(sql.statements.slice(n).filter((x) => x.startsWith('ALTER'))).toEqual(['ALTER TABLE "readings" ADD COLUMN "at" TIMESTAMP'])
    } finally {
      await sink.close()
      await store.close()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })

  it('creates the table before the first write when QuestDB was down at start', async () => {
    const r = await rig({ sqlFailing: true })
    expect(r.sql.statements).toEqual([])
    await r.append(3)
    await waitUntil(() => r.consumer.failures >= 1, 5000, 'DDL failure')
    expect(r.consumer.checkpoint).toBe(0)
    r.sql.failing = false
    await r.consumer.waitFor(3, 10_000)
    expect(r.sql.statements[0]).toMatch(/^CREATE TABLE IF NOT EXISTS "readings"/)
  })

  it('stores every row exactly once while QuestDB flaps between up, 500s, hangs and refused connections', async () => {
    const r = await rig({ timeoutMs: 400, resetMs: 100 })
    const port = r.server.port
    const states = ['error500', 'ok', 'hang', 'ok', 'down', 'ok', 'error500', 'down', 'ok'] as const
    let stop = false
    let transitions = 0
    const seen = new Set<string>()
    const sampler = setInterval(() => seen.add(r.sink.breaker().state), 10)
    const flapper = (async () => {
      for (let i = 0; !stop; i++) {
        const s = states[i % states.length]!
        if (s === 'down') await r.server.stop()
        else {
          if (r.server.port === 0 || !(await fetch(`http://127.0.0.1:${port}/`).then(() => true, () => false))) await r.server.start(port)
          r.server.mode = s
        }
        transitions++
        await new Promise((resolve) => setTimeout(resolve, 250))
      }
    })()
    for (let b = 0; b < 12; b++) {
      await r.append(25)
      await new Promise((resolve) => setTimeout(resolve, 150))
    }
    // Then QuestDB settles: the lag drains and every row is there once.
    await new Promise((resolve) => setTimeout(resolve, 500))
    stop = true
    await flapper
    clearInterval(sampler)
    if (!(await fetch(`http://127.0.0.1:${port}/`).then(() => true, () => false))) await r.server.start(port)
    r.server.mode = 'ok'
    await r.consumer.waitFor(300, 30_000)
    expect([...r.server.keys()].sort()).toEqual(allKeys(300).sort())
    expect(transitions).toBeGreaterThan(8)
    expect(r.consumer.status().failures).toBeGreaterThan(0)
    // (The 500s test above shows the breaker opening and closing; here it is sampled for the record.)
    process.stdout.write(`  flapping QuestDB: ${transitions} state changes, ${r.consumer.status().failures} failed flushes, breaker states seen: ${[...seen].join(', ')}; 300 entries stored once\n`)
    expect(r.sink.breaker().state).toBe('closed')
  }, 60_000)

  it('runs the client with flushing in its hands and explicit protocol settings', () => {
    expect(senderConfig('http::addr=q:9000;auto_flush=on')).toBe('http::addr=q:9000;auto_flush=off;protocol_version=1;')
    expect(() => senderConfig('http::addr=q:9000;retry_timeout=0')).toThrow(/retry_timeout/)
    expect(senderConfig('https::addr=q:9000;protocol_version=2;username=u;password=p')).toContain('protocol_version=2')
    expect(() => senderConfig('tcp::addr=q:9009')).toThrow(/http/)
    expect(() => senderConfig('nonsense')).toThrow(/STREAMGATE_QUESTDB/)
  })
})
