// Rate limits on the API: a principal over its rate gets 429 problem+json with Retry-After and the
// RateLimit headers, and MQTT keeps flowing meanwhile.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId, waitUntil } from '../helpers.js'

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

  it('refuses an address after too many failed logins, good keys too, for the rest of the minute, and audits it', async () => {
    const small = await startTestGateway({ STREAMGATE_API_AUTH_FAILURES_PER_MINUTE: '5', STREAMGATE_API_RATE: '0', STREAMGATE_API_RATE_PER_ADDRESS: '0' })
    try {
      // Without credentials: refused, but not a guess.
      for (let i = 0; i < 10; i++) expect((await api(small.httpUrl, null, 'GET', '/v1/datasets')).status).toBe(401)
      expect((await api(small.httpUrl, ADMIN_KEY, 'GET', '/v1/datasets')).status).toBe(200)
      const guesses: number[] = []
      for (let i = 0; i < 8; i++) guesses.push((await api(small.httpUrl, `sg_guess_${i}`, 'GET', '/v1/datasets')).status)
      expect(guesses).toEqual([401, 401, 401, 401, 401, 429, 429, 429])
      const blocked = await api(small.httpUrl, ADMIN_KEY, 'GET', '/v1/datasets')
      expect(blocked.status).toBe(429)
      expect(blocked.body.type).toBe('https://streamgate.dev/problems/rate-limited')
      const retry = Number(blocked.headers.get('retry-after'))
      expect(retry).toBeGreaterThanOrEqual(1)
      expect(retry).toBeLessThanOrEqual(60)
      // MQTT counts its own failures: the address still logs in there.
      const c = await connect(small.mqttUrl, 'admin', ADMIN_KEY)
      await c.endAsync()
      // The audit log (read from the store: the admin key is refused from here for the minute).
      const count = async (action: string): Promise<number> => (await small.sg.store.listAudit({ action }, 100)).length
      await waitUntil(async () => await count('auth.blocked') === 4, 5000, 'the blocked requests in the audit log')
      expect(await count('auth.failed')).toBe(15)
    } finally {
      await small.stop()
    }
  })

  it('takes a rate per principal kind where one is set', async () => {
    const small = await startTestGateway({ STREAMGATE_API_RATE: '1000', STREAMGATE_API_RATE_DEVICE: '5', STREAMGATE_API_RATE_PER_ADDRESS: '0' })
    try {
      const dev = await createPrincipalWithKey(small, uniqueId('dev'))
      const svc = await createPrincipalWithKey(small, uniqueId('svc'), 'service')
      const burst = async (key: string): Promise<number> => (await Promise.all(Array.from({ length: 20 }, () => api(small.httpUrl, key, 'GET', '/v1/datasets')))).filter((r) => r.status === 429).length
      const [devLimited, svcLimited] = await Promise.all([burst(dev.key), burst(svc.key)])
      expect(devLimited).toBeGreaterThanOrEqual(10) // 5 a second for devices
      expect(svcLimited).toBe(0) // 1,000 a second for the others
      const r = await api(small.httpUrl, dev.key, 'GET', '/v1/datasets')
      expect(r.headers.get('ratelimit-policy')).toBe('"principal";q=5;w=1')
    } finally {
      await small.stop()
    }
  })
})
