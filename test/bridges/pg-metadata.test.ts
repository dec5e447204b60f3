// The shared metadata store when PostgreSQL goes away in the middle of a transaction (an audit append,
// a metadata change): the call fails with a 503-class error and the process goes on. node-postgres
// raises the lost connection also as an 'error' event on the checked-out client, which ended the
// process while nothing listened to it. Needs the machine's PostgreSQL.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { PgMetadataStore } from '../../bridges/index.js'
import { sleep } from '../helpers.js'
import { pgSchema, type PgSchema } from '../support/postgres.js'
import { hostPort, TcpProxy } from '../support/tcp-proxy.js'

let schema: PgSchema
let proxy: TcpProxy
let store: PgMetadataStore

const entry = (n: number): Parameters<PgMetadataStore['appendChained']>[0][number] => ({
  actor: 'admin', address: '127.0.0.1', action: 'test.append', resource: `things/${n}`, outcome: 'ok', before: null, after: null, detail: null, requestId: null, at: new Date().toISOString()
})

beforeAll(async () => {
  schema = await pgSchema()
  const url = new URL(schema.url)
  proxy = new TcpProxy(hostPort(schema.url, 5432))
  await proxy.up()
  url.port = String(proxy.port)
  store = await PgMetadataStore.open({ url: url.toString(), nodeId: 'n1' })
})

afterAll(async () => {
  await store?.close().catch(() => undefined)
  await proxy?.down()
  await schema?.drop()
})

describe('PostgreSQL metadata store', () => {
  it('fails an audit append whose connection is lost mid-transaction, without an uncaught error, and appends again once PostgreSQL is back', async () => {
    await store.appendChained([entry(1)])
    const uncaught: unknown[] = []
    const onUncaught = (err: unknown): void => { uncaught.push(err) }
    process.on('uncaughtException', onUncaught)
    try {
      proxy.stall()
      const pending = store.appendChained([entry(2)])
      await sleep(200)
      await proxy.down()
      await expect(pending).rejects.toMatchObject({ code: 'SG_ERR_UNAVAILABLE' })
      await sleep(100)
      expect(uncaught).toEqual([])
      await proxy.up()
      // The broken connection went back to the pool as broken: the next append gets a new one.
      const [e] = await store.appendChained([entry(3)])
      expect(e!.seq).toBe(2)
      expect((await store.lastAudit())!.resource).toBe('things/3')
    } finally {
      process.off('uncaughtException', onUncaught)
    }
  })
})
