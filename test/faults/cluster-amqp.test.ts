// Two nodes consuming one RabbitMQ ingest queue (competing consumers), sharing Redis and PostgreSQL:
// kill -9 of node A mid-stream. RabbitMQ redelivers what A had not acked to node B, including messages
// A had journaled just before it died; when A comes back on its volume its journal is stored too. With
// a message_id on every message, the claims on message ids (Redis) let one copy of each be stored.
import fs from 'node:fs'
import amqplib from 'amqplib'
import { Redis } from 'ioredis'
import { afterAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, createDataset, createPrincipalWithKey, setGrants, tmpDataDir, uniqueId, waitUntil } from '../helpers.js'
import { type Child, killAll, startChild, stopChild } from '../support/child.js'
import { pgSchema } from '../support/postgres.js'
import { AMQP, amqpUrlAs, bridgeEnv, deleteBridgeObjects, deleteRabbitUsers, rabbitUser } from '../support/rabbit.js'

const REDIS = process.env.STREAMGATE_TEST_REDIS_URL_AMQP ?? 'redis://127.0.0.1:6379/12'
const N = 20_000

afterAll(async () => {
  await killAll()
  deleteRabbitUsers()
})

describe('two nodes on one RabbitMQ ingest queue', () => {
  it('stores every message once when one node is killed and RabbitMQ redelivers its unacked messages to the other', async () => {
    const redis = new Redis(REDIS)
    await redis.flushdb()
    await redis.quit()
    const schema = await pgSchema()
    const dirs = [tmpDataDir(), tmpDataDir()]
    const run = uniqueId('sgtwo')
    const env = (id: string): Record<string, string> => ({
      STREAMGATE_NODE_ID: id,
      STREAMGATE_REDIS_URL: REDIS,
      STREAMGATE_METADATA_URL: schema.url,
      ...bridgeEnv(run),
      STREAMGATE_QUERY_MAX_ROWS: String(N)
    })
    const status = async (c: Child): Promise<any> => (await api(`http://127.0.0.1:${c.httpPort}`, ADMIN_KEY, 'GET', '/v1/status')).body
    const admin = await amqplib.connect(AMQP)
    try {
      let a = await startChild(dirs[0]!, env('amqp-a'))
      const b = await startChild(dirs[1]!, env('amqp-b'))
      const httpA = { httpUrl: `http://127.0.0.1:${a.httpPort}` }
      const ds = uniqueId('two')
      await createDataset(httpA, ds, { fields: { n: 'long' } })
      const dev = await createPrincipalWithKey(httpA, uniqueId('dev'))
      await setGrants(httpA, ds, [{ principal: dev.id, actions: ['publish', 'query'] }])
      rabbitUser(dev.id, 'pw-' + dev.id)
      for (const c of [a, b]) await waitUntil(async () => (await status(c)).amqp.consuming === true, 30_000, 'both bridges to consume')
      await waitUntil(async () => (await api(`http://127.0.0.1:${b.httpPort}`, ADMIN_KEY, 'GET', `/v1/datasets/${ds}`)).status === 200, 2000, 'node b to know the dataset')

      const conn = await amqplib.connect(amqpUrlAs(dev.id, 'pw-' + dev.id))
      const ch = await conn.createConfirmChannel()
      for (let i = 0; i < N; i++) ch.publish(`${run}.ingest`, `${ds}.${dev.id}`, Buffer.from(JSON.stringify({ n: i })), { userId: dev.id, messageId: `n-${i}`, persistent: true })
      await ch.waitForConfirms()
      await conn.close()

      await waitUntil(async () => (await status(a)).amqp.acked >= 3000, 60_000, 'node a to ack 3,000')
      a.proc.kill('SIGKILL')
      await stopChild(a.proc, 'SIGKILL')
      // Node b takes the rest, with what a had not acked.
      const probe = await admin.createChannel() // one channel for every poll (RabbitMQ allows 2,047 a connection)
      await waitUntil(async () => {
        const q = await probe.checkQueue(`${run}.ingest`)
        return q.messageCount === 0 && (await status(b)).consumers[0].lag === 0
      }, 120_000, 'node b to take everything left')
      await probe.close()
      // Node a comes back on its volume: its journal's last entries are stored now (or skipped: b has them).
      a = await startChild(dirs[0]!, env('amqp-a'))
      const stored: number[] = []
      for (const c of [a, b]) {
        await waitUntil(async () => (await status(c)).consumers[0].lag === 0, 60_000, 'the store to catch up')
        const r = await api(`http://127.0.0.1:${c.httpPort}`, dev.key, 'GET', `/v1/datasets/${ds}/records?limit=${N}`)
        for (const rec of r.body.records as { n: number }[]) stored.push(rec.n)
      }
      const unique = new Set(stored)
      let missing = 0
      for (let i = 0; i < N; i++) if (!unique.has(i)) missing++
      process.stdout.write(`  two nodes, kill -9 of one: ${N} messages, ${stored.length} stored over both, ${stored.length - unique.size} twice, ${missing} missing\n`)
      expect(missing).toBe(0)
      expect(stored.length - unique.size).toBe(0)
      for (const c of [a, b]) expect(await stopChild(c.proc, 'SIGTERM')).toBe(0)
    } finally {
      await deleteBridgeObjects(admin, run)
      await admin.close().catch(() => undefined)
      for (const d of dirs) fs.rmSync(d, { recursive: true, force: true })
      await schema.drop()
    }
  }, 300_000)
})
