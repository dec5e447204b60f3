// Rate limits on the API: a principal over its rate gets 429 problem+json with Retry-After and the
// RateLimit headers, and MQTT keeps flowing meanwhile.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId } from '../helpers.js'

let gw: TestGateway
beforeAll(async () => { gw = await startTestGateway({ STREAMGATE_API_RATE: '20', STREAMGATE_API_RATE_PER_ADDRESS: '100000' }) })
afterAll(async () => { await gw?.stop() })

describe('API rate limits', () => {
  it('answers 1,000 requests over a principal\'s rate with 429 while MQTT keeps serving', async () => {
    const ds = uniqueId('rl')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const svc = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'query'] }, { principal: svc.id, actions: ['subscribe'] }])

    const sub = await connect(gw.mqttUrl, svc.id, svc.key)
    const pub = await connect(gw.mqttUrl, dev.id, dev.key)
    let received = 0
    sub.on('message', () => { received++ })
    await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    try {
      // MQTT traffic during the API flood.
      const mqttTraffic = (async () => {
        for (let i = 0; i < 300; i++) await pub.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: i }), { qos: 1 })
      })()
      const statuses: number[] = []
      let sample: Awaited<ReturnType<typeof api>> | null = null
      let limitedSoFar = 0
      const workers = Array.from({ length: 20 }, async () => {
        // Until 1,000 were refused (bounded: 3,000 requests at most).
        while (limitedSoFar < 1000 && statuses.length < 3000) {
          const r = await api(gw.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/stats`)
          statuses.push(r.status)
          if (r.status === 429) limitedSoFar++
          if (r.status === 429 && sample === null) sample = r
        }
      })
      await Promise.all(workers)
      await mqttTraffic
      const limited = statuses.filter((s) => s === 429).length
      expect(limited).toBeGreaterThanOrEqual(1000)
      expect(statuses.filter((s) => s !== 429 && s !== 200)).toEqual([])
      const r = sample!
      expect(r.headers.get('content-type')).toMatch(/application\/problem\+json/)
      expect(r.body).toMatchObject({ type: 'https://streamgate.dev/problems/rate-limited', status: 429 })
      expect(Number(r.headers.get('retry-after'))).toBeGreaterThanOrEqual(1)
      expect(r.headers.get('ratelimit-policy')).toBe('"principal";q=20;w=1')
      expect(r.headers.get('ratelimit')).toMatch(/^"principal";r=0;t=\d+$/)
      // Every message published during the flood was delivered.
      const deadline = Date.now() + 10_000
      while (received < 300 && Date.now() < deadline) await new Promise((resolve) => setTimeout(resolve, 20))
      expect(received).toBe(300)
      // Another principal is not limited by this one's flood; the first is served again after a second.
      expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}`)).status).toBe(200)
      await new Promise((resolve) => setTimeout(resolve, 1100))
      expect((await api(gw.httpUrl, dev.key, 'GET', `/v1/datasets/${ds}/stats`)).status).toBe(200)
    } finally {
      await pub.endAsync()
      await sub.endAsync()
    }
  })

  it('limits by source address before authentication, so guessing keys is limited too', async () => {
    const small = await startTestGateway({ STREAMGATE_API_RATE_PER_ADDRESS: '10' })
    try {
      const statuses = await Promise.all(Array.from({ length: 40 }, () => api(small.httpUrl, 'sg_guess', 'GET', '/v1/datasets').then((r) => r.status)))
      expect(statuses.filter((s) => s === 429).length).toBeGreaterThanOrEqual(25)
      expect(statuses.filter((s) => s !== 429).every((s) => s === 401)).toBe(true)
    } finally {
      await small.stop()
    }
  })
})
