// A damaged journal at start: a torn tail (a write cut short) and an entry with a flipped byte. The
// gateway keeps and stores every complete record, drops only the damaged ones, and reports them.
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, storedCount, tmpDataDir, uniqueId } from '../helpers.js'

describe('a damaged journal', () => {
  it('keeps every complete record, drops the damaged entry and the torn tail, and reports both', async () => {
    const dir = tmpDataDir()
    let gw = await startTestGateway({}, dir)
    const ds = uniqueId('torn')
    await createDataset(gw, ds, { fields: { n: 'long' } })
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    // The store must not take the records before the damage: pause it.
    await gw.sg.consumers[0]!.pause()
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    for (let i = 0; i < 20; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: i }), { qos: 1 })
    await c.endAsync()
    const first = gw.sg.journal.committedSeq - 19
    // The paused store cannot drain: do not wait STREAMGATE_SHUTDOWN_TIMEOUT_MS for it.
    await gw.sg.close(0)

    const jdir = path.join(dir, 'journal')
    const file = path.join(jdir, fs.readdirSync(jdir).filter((f) => f.endsWith('.seg')).sort().at(-1)!)
    const buf = fs.readFileSync(file)
    // Find the entry of the 8th record and flip a byte in its payload; then tear the last write.
    let off = 0
    while (buf.readDoubleLE(off + 16) !== first + 7) off += 8 + buf.readUInt32LE(off)
    const at = off + 8 + buf.readUInt32LE(off) - 2
    buf[at] = buf[at]! ^ 0xff
    fs.writeFileSync(file, Buffer.concat([buf, buf.subarray(0, 20)]))

    gw = await startTestGateway({}, dir)
    try {
      await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
      expect(await storedCount(gw.sg, ds)).toBe(19)
      const status = (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/status')).body
      expect(status.journal.recovery).toEqual({ truncatedBytes: 20, droppedSeqs: [first + 7] })
      const stored = ((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/records?limit=100`)).body.records as { n: number }[]).map((r) => r.n).sort((a, b) => a - b)
      expect(stored).toEqual(Array.from({ length: 20 }, (_, i) => i).filter((i) => i !== 7))
    } finally {
      await gw.stop()
    }
  })
})
