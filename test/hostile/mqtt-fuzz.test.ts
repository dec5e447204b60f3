// A fuzzer for the MQTT listeners (TCP and WebSocket): valid packets of every kind (MQTT 3.1, 3.1.1
// and 5, properties included), mutated (corrupted lengths and flags, remaining-length overflows,
// truncated frames, flipped bytes, random garbage), sent from a process of its own
// (test/support/mqtt-fuzzer.ts) on many short connections for a bounded count and time. The gateway
// must not crash, its memory must stay bounded, and a well-behaved client beside the fuzzer keeps
// publishing and receiving: never waiting long for an acknowledgement, and not starved of its rate.
// STREAMGATE_FUZZ_PACKETS and STREAMGATE_FUZZ_SECONDS set the bounds (npm run test:soak raises them).
import { spawn } from 'node:child_process'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { api, ADMIN_KEY, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, storedCount, type TestGateway, uniqueId, waitUntil } from '../helpers.js'

const PACKETS = Number(process.env.STREAMGATE_FUZZ_PACKETS ?? 20_000)
const SECONDS = Number(process.env.STREAMGATE_FUZZ_SECONDS ?? 20)

let gw: TestGateway
beforeAll(async () => {
  // Fuzz connections fail logins on purpose: no login-failure lockout for this test's address.
  gw = await startTestGateway({ STREAMGATE_AUTH_FAILURES_PER_MINUTE: '0', STREAMGATE_CONNECT_TIMEOUT_MS: '2000' })
})
afterAll(async () => { await gw?.stop() })

describe('MQTT wire fuzzing', () => {
  it(`survives ${PACKETS} mutated packets over TCP and WebSocket while a good client keeps working`, async () => {
    const ds = uniqueId('fuzz')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const svc = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }, { principal: svc.id, actions: ['subscribe'] }])
    const rssBefore = process.memoryUsage().rss

    // The well-behaved pair.
    const sub = await connect(gw.mqttUrl, svc.id, svc.key)
    let received = 0
    sub.on('message', () => { received++ })
    await sub.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
    const pub = await connect(gw.mqttUrl, dev.id, dev.key)
    let published = 0
    let stop = false
    let fuzzing = false
    let longestWaitMs = 0 // the longest a publish of the good client waited for its PUBACK while the fuzzer ran
    const good = (async () => {
      while (!stop) {
        const at = performance.now()
        await pub.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: published }), { qos: 1 })
        if (fuzzing) longestWaitMs = Math.max(longestWaitMs, performance.now() - at)
        published++
      }
    })()
    // Its rate alone, then beside the fuzzer.
    await new Promise((resolve) => setTimeout(resolve, 2000))
    const alone = published / 2

    const seed = Number(process.env.STREAMGATE_FUZZ_SEED ?? Date.now() % 1_000_000)
    const fuzzer = spawn(process.execPath, ['--import', 'tsx', path.join(import.meta.dirname, '../support/mqtt-fuzzer.ts'),
      String(gw.sg.addresses.mqtt.port), gw.wsUrl, ds, dev.id, dev.key, String(PACKETS), String(SECONDS), String(seed)], { stdio: ['ignore', 'pipe', 'inherit'] })
    let out = ''
    fuzzer.stdout!.on('data', (d: Buffer) => { out += d.toString() })
    const fuzzStart = { at: performance.now(), published }
    fuzzing = true
    const code = await new Promise<number | null>((resolve) => fuzzer.once('exit', resolve))
    fuzzing = false
    const beside = (published - fuzzStart.published) / ((performance.now() - fuzzStart.at) / 1000)
    const sent = Number(/sent (\d+)/.exec(out)?.[1] ?? 0)
    expect(code, 'the fuzzer process').toBe(0)
    stop = true
    await good
    await pub.endAsync()

    // Still serving: a new client connects, publishes, and everything the good client sent is there.
    const again = await connect(gw.mqttUrl, dev.id, dev.key)
    await again.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: -1 }), { qos: 1 })
    await again.endAsync()
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    const deadlineReceive = Date.now() + 10_000
    while (received < published + 1 && Date.now() < deadlineReceive) await new Promise((resolve) => setTimeout(resolve, 20))
    await sub.endAsync()
    const growthMiB = (process.memoryUsage().rss - rssBefore) / 2 ** 20
    process.stdout.write(`  fuzz: seed ${seed}, ${sent} packets on many connections in ${SECONDS} s at most; good client published ${published} (${alone.toFixed(0)}/s alone, ${beside.toFixed(0)}/s beside the fuzzer, longest PUBACK wait ${longestWaitMs.toFixed(0)} ms), received ${received}; RSS +${growthMiB.toFixed(0)} MiB\n`)
    expect(sent).toBeGreaterThanOrEqual(Math.min(PACKETS, 2000))
    expect(published).toBeGreaterThan(100)
    // The fuzzer opens ~3,000 connections a second from one address (no per-address limit here, so that
    // everything it sends is parsed): serving those costs the shared event loop, but the good client is
    // never starved. Measured alone, its share is 0.29-0.39 of its rate without the fuzzer on 2 cores;
    // inside the full suite other files compete for the same cores at changing moments (0.12 seen in
    // CI), so the rate bound is for gross starvation and the wait bound for stalls.
    expect(longestWaitMs, 'the longest PUBACK wait of the good client beside the fuzzer').toBeLessThan(2000)
    expect(beside, 'the good client\'s rate beside the fuzzer').toBeGreaterThan(alone / 20)
    // The good client's records are stored (the fuzzer's own valid publishes may add some: at least as many).
    expect(await storedCount(gw.sg, ds)).toBeGreaterThanOrEqual(published + 1)
    expect(received).toBeGreaterThanOrEqual(published + 1)
    expect(growthMiB).toBeLessThan(300)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', '/healthz')).status).toBe(200)
    await waitUntil(() => gw.sg.broker.sessions().length === 0, 5000, 'every fuzz session to be gone')
  }, SECONDS * 1000 + 90_000)
})
