// Clock jumps and out-of-order device timestamps: arrival times stay strictly increasing when the
// wall clock jumps back (so rows without their own timestamp never collide in the store's keys), also
// across a restart; a running gateway takes, stores and orders everything across jumps both ways; a
// login block ends with its window even when the clock went back; and readings that arrive out of
// order are stored and answered in time order.
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest'
import { ArrivalClock } from '../../gateway/index.js'
import { FailureWindow } from '../../gateway/limits.js'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, tmpDataDir, uniqueId } from '../helpers.js'

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

describe('failed-login window', () => {
  it('starts a new window when the wall clock goes back, instead of blocking for the length of the jump', () => {
    const w = new FailureWindow(3, 60_000)
    const t = 1_800_000_000_000
    for (let i = 0; i < 3; i++) w.fail('10.0.0.9', t)
    expect(w.blocked('10.0.0.9', t + 1000)).toBe(true)
    // An hour back: a new window (at worst one window's worth of guesses more), not an hour's block.
    expect(w.blocked('10.0.0.9', t - 3_600_000)).toBe(false)
  })

  it('keeps its blocks when a flood of other addresses fills it', () => {
    const w = new FailureWindow(3, 60_000, 100)
    const t = 1_800_000_000_000
    for (let i = 0; i < 3; i++) w.fail('10.0.0.9', t)
    for (let i = 0; i < 1000; i++) w.fail(`10.1.${i >> 8}.${i & 255}`, t + 1)
    expect(w.blocked('10.0.0.9', t + 2)).toBe(true)
  })
})

describe('a running gateway across clock jumps', () => {
  it('acknowledges, stores and orders every record across jumps back and forward, and across a restart behind the journal', async () => {
    const realNow = Date.now.bind(Date)
    let offset = 0
    const now = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + offset)
    const dir = tmpDataDir()
    let g = await startTestGateway({}, dir)
    try {
      const ds = uniqueId('jump')
      await createDataset(g, ds, { fields: { n: 'long' } }) // no timestamp field: ts is the arrival time
      const dev = await createPrincipalWithKey(g, uniqueId('dev'))
      await setGrants(g, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
      let n = 0
      const publish = async (count: number): Promise<void> => {
        const c = await connect(g.mqttUrl, dev.id, dev.key)
        for (let i = 0; i < count; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: n++ }), { qos: 1 })
        await c.endAsync()
      }
      await publish(50)
      offset = -3_600_000 // an hour back (NTP step, VM restored from a snapshot)
      await publish(50)
      offset = 7_200_000 // then two hours ahead
      await publish(50)
      offset = -3_600_000
      // A restart while the clock is an hour behind what the journal holds.
      await g.sg.consumers[0]!.waitFor(g.sg.journal.committedSeq)
      await g.sg.close()
      g = await startTestGateway({}, dir)
      await publish(50)
      await g.sg.consumers[0]!.waitFor(g.sg.journal.committedSeq)
      const rows = (await api(g.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/query`, { select: ['n'], order: 'asc', limit: 1000 })).body.rows as { ts: string, n: number }[]
      expect(rows.map((r) => r.n)).toEqual(Array.from({ length: 200 }, (_, i) => i))
      const ts = rows.map((r) => Date.parse(r.ts))
      for (let i = 1; i < ts.length; i++) expect(ts[i]!, `row ${i}`).toBeGreaterThanOrEqual(ts[i - 1]!)
    } finally {
      now.mockRestore()
      await g.stop()
    }
  })
})

describe('a journal written by a clock far ahead', () => {
  it('is not followed after a restart: arrival times come from the wall clock again', async () => {
    const realNow = Date.now.bind(Date)
    let offset = 3 * 86_400_000 // three days ahead: a wrong clock
    const now = vi.spyOn(Date, 'now').mockImplementation(() => realNow() + offset)
    const dir = tmpDataDir()
    let g = await startTestGateway({}, dir)
    try {
      const ds = uniqueId('ahead')
      await createDataset(g, ds, { fields: { n: 'long' } })
      const dev = await createPrincipalWithKey(g, uniqueId('dev'))
      await setGrants(g, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
      const publish = async (n: number): Promise<void> => {
        const c = await connect(g.mqttUrl, dev.id, dev.key)
        await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n }), { qos: 1 })
        await c.endAsync()
      }
      await publish(1)
      await g.sg.consumers[0]!.waitFor(g.sg.journal.committedSeq)
      await g.sg.close()
      offset = 0 // the clock fixed
      g = await startTestGateway({}, dir)
      await publish(2)
      await g.sg.consumers[0]!.waitFor(g.sg.journal.committedSeq)
      const rows = (await api(g.httpUrl, dev.key, 'POST', `/v1/datasets/${ds}/query`, { select: ['n'], order: 'asc', limit: 10 })).body.rows as { ts: string, n: number }[]
      const second = rows.find((r) => r.n === 2)!
      expect(Math.abs(Date.parse(second.ts) - realNow())).toBeLessThan(60_000)
    } finally {
      now.mockRestore()
      await g.stop()
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
