// The query suite: the same queries, with answers computed here from the fixture, run through the API
// against any store. test/integration/query.test.ts runs it on the embedded store; the QuestDB suite
// runs it on QuestDB when one is given.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import type { Env } from '../../config/index.js'
import {
  ADMIN_KEY, api, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId
} from '../helpers.js'

const BASE = Date.UTC(2025, 0, 1, 12, 0, 0) // ms
export interface FixtureRow { ts: number, device: string, site?: string, temp?: number, count: number, ok: boolean, note: string, at: number }

export const FIXTURE: FixtureRow[] = Array.from({ length: 60 }, (_, i) => {
  const r: FixtureRow = { ts: BASE + i * 5000, device: `d${i % 3}`, count: i, ok: i % 2 === 0, note: `n${i % 4}`, at: BASE + i }
  if (i % 7 !== 0) r.site = `s${i % 2}`
  if (i % 11 !== 0) r.temp = Math.round(((i * 1.5) % 17) * 100) / 100
  return r
})

const iso = (ms: number): string => new Date(ms).toISOString().replace('Z', '000Z')

export function querySuite (store: string, env: () => Env | null, waitVisible: (gw: TestGateway, dataset: string, rows: number) => Promise<void>): void {
  const skip = env() === null
  describe.skipIf(skip)(`query language on ${store}`, () => {
    let gw: TestGateway
    let ds: string
    let key: string
    const query = async (body: unknown): Promise<{ status: number, body: any }> => api(gw.httpUrl, key, 'POST', `/v1/datasets/${ds}/query`, body)

    beforeAll(async () => {
      gw = await startTestGateway(env() ?? {})
      ds = uniqueId('q')
      await createDataset(gw, ds, { timestamp: 'ts', tags: ['site'], fields: { temp: 'double', count: 'long', ok: 'boolean', note: 'string', at: 'timestamp' } })
      const p = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
      key = p.key
      await setGrants(gw, ds, [{ principal: p.id, actions: ['publish', 'query'], devices: ['+'] }])
      const r = await api(gw.httpUrl, key, 'POST', `/v1/datasets/${ds}/records`, FIXTURE)
      expect(r.status).toBe(202)
      expect(r.body.accepted).toBe(FIXTURE.length)
      await waitVisible(gw, ds, FIXTURE.length)
    })
    afterAll(async () => { await gw?.stop() })

    it('returns raw rows in time order with every column', async () => {
      const r = await query({})
      expect(r.status).toBe(200)
      expect(r.body.rows).toHaveLength(60)
      expect(r.body.nextCursor).toBeNull()
      const first = r.body.rows[1]
      expect(first).toEqual({ ts: iso(BASE + 5000), device: 'd1', site: 's1', temp: 1.5, count: 1, ok: false, note: 'n1', at: iso(BASE + 1) })
      expect(r.body.rows[0].site).toBeNull()
      expect(r.body.rows[0].temp).toBeNull()
    })

    it('selects columns and filters by time range, device, numbers, booleans and strings', async () => {
      const r = await query({
        from: BASE + 10_000, to: iso(BASE + 200_000), select: ['device', 'count'],
        where: [{ column: 'device', op: 'in', value: ['d0', 'd2'] }, { column: 'count', op: '>=', value: 5 }, { column: 'ok', op: '=', value: true }, { column: 'note', op: '!=', value: 'n2' }]
      })
      expect(r.status).toBe(200)
      const expected = FIXTURE.filter((x) => x.ts >= BASE + 10_000 && x.ts < BASE + 200_000 && ['d0', 'd2'].includes(x.device) && x.count >= 5 && x.ok && x.note !== 'n2')
      expect(r.body.rows).toEqual(expected.map((x) => ({ ts: iso(x.ts), device: x.device, count: x.count })))
    })

    it('treats absent values as absent: ranges skip them, != matches them', async () => {
      const lt = await query({ select: ['temp'], where: [{ column: 'temp', op: '<', value: 5 }] })
      expect(lt.body.rows.length).toBe(FIXTURE.filter((x) => x.temp !== undefined && x.temp < 5).length)
      const ne = await query({ select: ['site'], where: [{ column: 'site', op: '!=', value: 's1' }] })
      expect(ne.body.rows.length).toBe(FIXTURE.filter((x) => x.site !== 's1').length)
      const ts = await query({ select: ['at'], where: [{ column: 'at', op: '>', value: iso(BASE + 50) }] })
      expect(ts.body.rows.length).toBe(9)
    })

    it('pages with keyset cursors, ascending and descending', async () => {
      for (const order of ['asc', 'desc'] as const) {
        const seen: number[] = []
        let cursor: string | undefined
        for (let page = 0; page < 20; page++) {
          const r = await query({ select: ['count'], order, limit: 7, ...(cursor !== undefined ? { cursor } : {}) })
          expect(r.status).toBe(200)
          seen.push(...r.body.rows.map((x: { count: number }) => x.count))
          if (r.body.nextCursor === null) break
          cursor = r.body.nextCursor
        }
        const all = FIXTURE.map((x) => x.count)
        expect(seen).toEqual(order === 'asc' ? all : [...all].reverse())
      }
    })

    it('aggregates per time bucket and device, with every function, and pages through the groups', async () => {
      const body = { bucket: '1m', groupBy: ['device'], aggregate: { temp: ['avg', 'min', 'max', 'count', 'sum', 'first', 'last'], count: ['sum'], at: ['max'] }, limit: 4 }
      const rows: any[] = []
      let cursor: string | undefined
      for (let page = 0; page < 10; page++) {
        const r = await query({ ...body, ...(cursor !== undefined ? { cursor } : {}) })
        expect(r.status).toBe(200)
        rows.push(...r.body.rows)
        if (r.body.nextCursor === null) break
        cursor = r.body.nextCursor
      }
      const groups = new Map<string, FixtureRow[]>()
      for (const x of FIXTURE) {
        const k = `${Math.floor(x.ts / 60_000) * 60_000}|${x.device}`
        groups.set(k, [...(groups.get(k) ?? []), x])
      }
      const expected = [...groups.entries()].sort(([a], [b]) => {
        const [ba, da] = a.split('|') as [string, string]
        const [bb, db] = b.split('|') as [string, string]
        return Number(ba) - Number(bb) || (da < db ? -1 : da > db ? 1 : 0)
      }).map(([k, xs]) => {
        const temps = xs.filter((x) => x.temp !== undefined).map((x) => x.temp!)
        const byTs = [...xs].sort((a, b) => a.ts - b.ts)
        return {
          bucket: iso(Number(k.split('|')[0])),
          device: k.split('|')[1],
          temp_avg: temps.length === 0 ? null : temps.reduce((a, b) => a + b, 0) / temps.length,
          temp_min: temps.length === 0 ? null : Math.min(...temps),
          temp_max: temps.length === 0 ? null : Math.max(...temps),
          temp_count: temps.length,
          temp_sum: temps.length === 0 ? null : temps.reduce((a, b) => a + b, 0),
          temp_first: byTs[0]!.temp ?? null,
          temp_last: byTs.at(-1)!.temp ?? null,
          count_sum: xs.reduce((a, x) => a + x.count, 0),
          at_max: iso(Math.max(...xs.map((x) => x.at)))
        }
      })
      expect(rows.length).toBe(expected.length)
      for (let i = 0; i < rows.length; i++) {
        const got = rows[i]
        const want = expected[i]!
        for (const k of Object.keys(want) as (keyof typeof want)[]) {
          if (typeof want[k] === 'number' && k !== 'temp_count' && k !== 'count_sum') expect(got[k], `${i} ${k}`).toBeCloseTo(want[k] as number, 9)
          else expect(got[k], `${i} ${k}`).toEqual(want[k])
        }
      }
    })

    it('aggregates by tag without buckets, and over the whole range', async () => {
      const bySite = await query({ groupBy: ['site'], aggregate: { count: ['count', 'max'] } })
      expect(bySite.status).toBe(200)
      const sites = [undefined, 's0', 's1']
      expect(bySite.body.rows).toEqual(sites.map((s) => {
        const xs = FIXTURE.filter((x) => x.site === s)
        return { site: s ?? null, count_count: xs.length, count_max: Math.max(...xs.map((x) => x.count)) }
      }))
      const all = await query({ from: BASE, to: BASE + 60_000, aggregate: { temp: ['max'], ok: ['count'] } })
      const xs = FIXTURE.filter((x) => x.ts < BASE + 60_000)
      expect(all.body.rows).toEqual([{ temp_max: Math.max(...xs.filter((x) => x.temp !== undefined).map((x) => x.temp!)), ok_count: xs.length }])
    })

    it('refuses unknown columns, misplaced options, bad values and forged cursors with the field named', async () => {
      const cases: [unknown, string][] = [
        [{ select: ['nope'] }, 'select/0'],
        [{ select: ['temp"; DROP TABLE x; --'] }, 'select/0'],
        [{ where: [{ column: 'temp', op: 'like', value: 1 }] }, 'where/0/op'],
        [{ where: [{ column: 'temp', op: '=', value: 'hot' }] }, 'where/0/value'],
        [{ where: [{ column: 'ok', op: '<', value: true }] }, 'where/0/op'],
        [{ bucket: '1m' }, 'bucket'],
        [{ aggregate: { ok: ['avg'] } }, 'aggregate/ok'],
        [{ aggregate: { temp: ['avg'] }, groupBy: ['temp'] }, 'groupBy/0'],
        [{ bucket: '1 minute', aggregate: { temp: ['avg'] } }, 'bucket'],
        [{ cursor: 'garbage' }, 'cursor'],
        [{ limit: 10_000_000 }, 'limit'],
        [{ from: 'yesterday' }, 'from'],
        [{ sql: 'SELECT 1' }, '']
      ]
      for (const [body, field] of cases) {
        const r = await query(body)
        expect(r.status, JSON.stringify(body)).toBe(400)
        expect(r.body.type).toBe('https://streamgate.dev/problems/validation')
        expect(r.body.field, JSON.stringify(body)).toBe(field)
      }
      // Values travel as parameters: an injection attempt is just a string that matches nothing.
      const inj = await query({ where: [{ column: 'note', op: '=', value: "n1' OR '1'='1" }] })
      expect(inj.status).toBe(200)
      expect(inj.body.rows).toEqual([])
    })

    it('requires the query grant', async () => {
      const other = await createPrincipalWithKey(gw, uniqueId('dev'))
      const r = await api(gw.httpUrl, other.key, 'POST', `/v1/datasets/${ds}/query`, {})
      expect(r.status).toBe(403)
      expect((await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/datasets/${ds}/query`, { limit: 1 })).status).toBe(200)
    })
  })
}
