// Deleting datasets without losing or leaking records: a delete without purge never discards
// acknowledged records still on their way to the store, and records of a deleted dataset still in
// the journal never land in a new dataset of the same id.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, storedCount, type TestGateway, uniqueId } from '../helpers.js'

let gw: TestGateway
beforeAll(async () => { gw = await startTestGateway({ STREAMGATE_SINK_LINGER_MS: '1000' }) })
afterAll(async () => { await gw?.stop() })

describe('dataset lifecycle', () => {
  it('refuses a delete without purge while acknowledged records are still on their way to the store', async () => {
    const ds = uniqueId('lc')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    // The sink lingers a second between small batches: these are acknowledged but not stored yet.
    for (let i = 0; i < 5; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: i }), { qos: 1 })
    await c.endAsync()
    const r = await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/datasets/${ds}`)
    expect(r.status).toBe(409)
    expect(r.body).toMatchObject({ type: 'https://streamgate.dev/problems/dataset-not-empty', stored: 5 })
    // Nothing was lost, and the dataset is still there.
    expect(await storedCount(gw.sg, ds)).toBe(5)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}`)).status).toBe(200)
  })

  it('never stores records of a deleted dataset in a new dataset of the same id', async () => {
    const ds = uniqueId('lc')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    // The store falls behind (paused): the old dataset's records wait in the journal.
    await gw.sg.consumers[0]!.pause()
    try {
      const c = await connect(gw.mqttUrl, dev.id, dev.key)
      for (let i = 0; i < 10; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: i }), { qos: 1 })
      await c.endAsync()
      expect((await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/datasets/${ds}?purge=true`)).status).toBe(204)
      // A new dataset with the same id, same schema, another owner.
      await createDataset(gw, ds, { fields: { n: 'long' } })
      const other = await createPrincipalWithKey(gw, uniqueId('dev'))
      await setGrants(gw, ds, [{ principal: other.id, actions: ['publish'] }])
      const o = await connect(gw.mqttUrl, other.id, other.key)
      await o.publishAsync(`datasets/${ds}/${other.id}`, JSON.stringify({ n: 100 }), { qos: 1 })
      await o.endAsync()
    } finally {
      gw.sg.consumers[0]!.resume()
    }
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(1)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/records`)).body.records.map((r: { n: number }) => r.n)).toEqual([100])
  })
})
