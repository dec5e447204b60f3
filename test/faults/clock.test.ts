// Clock jumps and out-of-order device timestamps: arrival times stay strictly increasing when the
// wall clock jumps back (so rows without their own timestamp never collide in the store's keys), and
// readings that arrive out of order are stored and answered in time order.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { ArrivalClock } from '../../gateway/index.js'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId } from '../helpers.js'

describe('arrival clock', () => {
  it('stays strictly increasing across a backward jump of the wall clock, and follows a forward one', () => {
    const clock = new ArrivalClock()
    const now = vi.spyOn(Date, 'now')
    try {
      now.mockReturnValue(1_800_000_000_000)
      const a = clock.now()
      now.mockReturnValue(1_799_999_000_000) // 1,000 s back (NTP step, VM resume)
      const b = clock.now()
      const c = clock.now()
      now.mockReturnValue(1_800_010_000_000) // forward again
      const d = clock.now()
      expect(b).toBeGreaterThan(a)
      expect(c).toBeGreaterThan(b)
      expect(d).toBe(1_800_010_000_000_000)
    } finally {
      now.mockRestore()
    }
  })
})

let gw: TestGateway
beforeAll(async () => { gw = await startTestGateway() })
afterAll(async () => { await gw?.stop() })

describe('out-of-order device timestamps', () => {
  it('stores readings that arrive out of order and answers them in time order', async () => {
    const ds = uniqueId('ooo')
    await createDataset(gw, ds, { timestamp: 'ts', fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    const base = Date.parse('2026-03-01T00:00:00Z')
    // A device that buffered offline sends late readings after newer ones, one twice (a retry).
    for (const [n, dt] of [[3, 3000], [1, 1000], [4, 4000], [2, 2000], [0, 0], [2, 2000]]) {
      await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ ts: base + dt!, n }), { qos: 1 })
    }
    await c.endAsync()
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const asc = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/query`, { select: ['n'], order: 'asc' })
    expect(asc.body.rows.map((r: { n: number }) => r.n)).toEqual([0, 1, 2, 2, 3, 4])
    const last = await api(gw.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/query`, { aggregate: { n: ['last', 'first'] } })
    expect(last.body.rows).toEqual([{ n_last: 4, n_first: 0 }])
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body.lastRecordAt).toBe('2026-03-01T00:00:04.000000Z')
  })
})
