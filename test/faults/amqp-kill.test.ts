// kill -9 of the gateway while its RabbitMQ bridge consumes, again and again on the same data
// directory. RabbitMQ redelivers what was not acked, including messages journaled just before the
// kill whose ack never reached it; with a message_id each is stored exactly once. Needs the machine's
// RabbitMQ. STREAMGATE_FAULT_KILLS sets the number of kills (3 here, 20 in npm run test:soak).
import fs from 'node:fs'
import amqplib from 'amqplib'
import { afterAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, createDataset, createPrincipalWithKey, setGrants, tmpDataDir, uniqueId, waitUntil } from '../helpers.js'
import { type Child, killAll, startChild, stopChild } from '../support/child.js'
import { AMQP, amqpUrlAs, bridgeEnv, deleteBridgeObjects, deleteRabbitUsers, rabbitUser } from '../support/rabbit.js'

const KILLS = Number(process.env.STREAMGATE_FAULT_KILLS ?? 3)
const N = 10_000 * (KILLS + 1)

afterAll(async () => {
  await killAll()
  deleteRabbitUsers()
})

describe('kill -9 while consuming from RabbitMQ', () => {
  it(`stores every message exactly once across ${KILLS} kills, counting redeliveries as duplicates`, async () => {
    const dataDir = tmpDataDir()
    const run = uniqueId('sgkill')
    const env = { ...bridgeEnv(run), STREAMGATE_QUERY_MAX_ROWS: String(N) }
    const status = async (c: Child): Promise<any> => (await api(`http://127.0.0.1:${c.httpPort}`, ADMIN_KEY, 'GET', '/v1/status')).body
    const admin = await amqplib.connect(AMQP)
    try {
      // Set up with the bridge off, then fill the queue, then start consuming: each life begins on a
      // known backlog (published while consuming, the first life took 20k-35k messages before the first poll).
      let child = await startChild(dataDir)
      const http = (): string => `http://127.0.0.1:${child.httpPort}`
      const ds = uniqueId('akill')
      await createDataset({ httpUrl: http() }, ds, { fields: { n: 'long' } })
      const dev = await createPrincipalWithKey({ httpUrl: http() }, uniqueId('dev'))
      await setGrants({ httpUrl: http() }, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
      expect(await stopChild(child.proc, 'SIGTERM')).toBe(0)
      rabbitUser(dev.id, 'pw-' + dev.id)
      // The queue and binding as the bridge declares them.
      const setup = await admin.createChannel()
      await setup.assertExchange(`${run}.ingest`, 'topic', { durable: true })
      await setup.assertQueue(`${run}.ingest`, { durable: true })
      await setup.bindQueue(`${run}.ingest`, `${run}.ingest`, '#')
      await setup.close()

      // Everything is in RabbitMQ (confirmed) before the bridge starts: it works through it across the kills.
      const conn = await amqplib.connect(amqpUrlAs(dev.id, 'pw-' + dev.id))
      const ch = await conn.createConfirmChannel()
      for (let i = 0; i < N; i++) {
        ch.publish(`${run}.ingest`, `${ds}.${dev.id}`, Buffer.from(JSON.stringify({ n: i })), { userId: dev.id, messageId: `n-${i}`, persistent: true })
      }
      await ch.waitForConfirms()
      await conn.close()
      child = await startChild(dataDir, env)

      let duplicates = 0
      let acked = 0
      for (let k = 0; k < KILLS; k++) {
        // A random point, some thousands of messages into this life.
        const killAt = 2000 + Math.floor(Math.random() * 5000)
        let last: any = null
        await waitUntil(async () => { last = (await status(child)).amqp; return last.acked >= killAt }, 60_000, `${killAt} messages acked`)
          .catch(async (err: Error) => {
            // RabbitMQ's side: messages ready and consumers (a stalled consumer vs an empty queue).
            const ch = await admin.createChannel()
            const q = await ch.checkQueue(`${run}.ingest`).finally(() => ch.close().catch(() => undefined))
            throw new Error(`${err.message} in life ${k + 1}; the bridge: ${JSON.stringify(last)}; the queue: ${JSON.stringify(q)}\n${child.output().slice(-2000)}`)
          })
        child.proc.kill('SIGKILL')
        await stopChild(child.proc, 'SIGKILL')
        duplicates += last.duplicates as number
        acked += last.acked as number
        const left = await admin.createChannel()
        const q = await left.checkQueue(`${run}.ingest`).finally(() => left.close().catch(() => undefined))
        process.stdout.write(`  life ${k + 1}: killed after ${last.acked as number} acks (aimed at ${killAt}), ${q.messageCount} messages left in the queue\n`)
        child = await startChild(dataDir, env)
      }
      await waitUntil(async () => (await api(http(), ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body.stored >= N, 120_000, `${N} records stored`)
      // Exactly N rows, so none beyond the N read back below can hide.
      expect((await api(http(), ADMIN_KEY, 'GET', `/v1/datasets/${ds}/stats`)).body.stored, 'rows stored').toBe(N)
      const check = await admin.createChannel()
      const queue = await check.checkQueue(`${run}.ingest`)
      await check.close()
      expect(queue.messageCount, 'messages left in the queue').toBe(0)
      const end = (await status(child)).amqp
      duplicates += end.duplicates as number
      acked += end.acked as number
      const records = (await api(http(), dev.key, 'GET', `/v1/datasets/${ds}/records?limit=${N}`)).body.records as { n: number }[]
      const stored = records.map((x) => x.n)
      const unique = new Set(stored)
      let missing = 0
      for (let i = 0; i < N; i++) if (!unique.has(i)) missing++
      process.stdout.write(`  kill -9 while consuming AMQP: ${KILLS} kills, ${N} messages, ${acked} acks (last seen per life), ${duplicates} redeliveries recognised, ${stored.length} stored, ${stored.length - unique.size} duplicates stored, ${missing} missing\n`)
      expect(stored.length - unique.size, 'duplicates stored').toBe(0)
      expect(missing, 'messages not stored').toBe(0)
      expect(stored.length).toBe(N)
      expect(await stopChild(child.proc, 'SIGTERM')).toBe(0)
    } finally {
      await deleteBridgeObjects(admin, run)
      await admin.close().catch(() => undefined)
      fs.rmSync(dataDir, { recursive: true, force: true })
    }
  }, Math.max(300_000, KILLS * 40_000))
})
