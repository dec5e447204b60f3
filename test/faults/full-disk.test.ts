// A full disk under the journal: a 1 MiB tmpfs mounted as the journal directory (needs root, which
// these machines and CI have; elsewhere the test says it is skipped). Publishes are refused with a
// clear reason while it is full, nothing is corrupted, and ingestion resumes once space returns.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, closed, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, storedCount, tmpDataDir, uniqueId, waitUntil } from '../helpers.js'

function canMount (): boolean {
  const probe = tmpDataDir()
  try {
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=64k', 'tmpfs', probe], { stdio: 'ignore' })
    execFileSync('umount', [probe], { stdio: 'ignore' })
    return true
  } catch {
    return false
  } finally {
    fs.rmSync(probe, { recursive: true, force: true })
  }
}

const mounted: string[] = []
afterAll(() => { for (const m of mounted) try { execFileSync('umount', ['-l', m], { stdio: 'ignore' }) } catch { /* already */ } })

describe.skipIf(!canMount())('a full disk under the journal', () => {
  it('refuses publishes while full, corrupts nothing, and resumes when space returns', async () => {
    const dir = tmpDataDir()
    const journalDir = path.join(dir, 'journal')
    fs.mkdirSync(journalDir)
    execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tmpfs', journalDir])
    mounted.push(journalDir)
    let gw = await startTestGateway({ STREAMGATE_JOURNAL_SEGMENT_BYTES: String(64 * 1024) }, dir)
    try {
      const ds = uniqueId('disk')
      await createDataset(gw, ds, { fields: { n: 'long', pad: 'string' } })
      const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
      await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
      // Nothing frees the journal for now.
      await gw.sg.consumers[0]!.pause()
      const acked = new Set<number>()
      let n = 0
      const c = await connect(gw.mqttUrl, dev.id, dev.key)
      const gone = closed(c, 60_000)
      while (c.connected && n < 5000) {
        const i = n++
        await Promise.race([c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: i, pad: 'x'.repeat(1000) }), { qos: 1 }).then(() => { acked.add(i) }, () => undefined), gone])
      }
      // Refused without a PUBACK: the client was disconnected once the disk was full.
      await gone
      expect(acked.size).toBeGreaterThan(300)
      expect(acked.size).toBeLessThan(1100) // ~1 KiB entries in 1 MiB
      // HTTP says why.
      const r = await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/datasets/${ds}/records`, [{ device: dev.id, n: -1, pad: 'x'.repeat(1000) }])
      expect(r.status).toBe(503)
      expect(r.body.detail).toMatch(/ENOSPC|no space/i)
      expect(gw.sg.journal.healthy).toBe(true)

      // Space returns: the store takes what is there, consumed segments are deleted, publishing works.
      gw.sg.consumers[0]!.resume()
      await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
      await waitUntil(async () => (await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/datasets/${ds}/records`, [{ device: dev.id, n: 100_000, pad: 'y' }])).status === 202, 10_000, 'ingestion to resume')
      const again = await connect(gw.mqttUrl, dev.id, dev.key)
      await again.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 100_001 }), { qos: 1 })
      await again.endAsync()
      await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
      const stored = await storedCount(gw.sg, ds)

      // Nothing corrupted: a restart finds a clean journal, and every acknowledged record is stored once.
      await gw.sg.close()
      gw = await startTestGateway({ STREAMGATE_JOURNAL_SEGMENT_BYTES: String(64 * 1024) }, dir)
      expect(gw.sg.journal.recovery).toMatchObject({ truncatedBytes: 0, droppedSeqs: [] })
      const records = ((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/records?limit=10000`)).body.records as { n: number }[]).map((x) => x.n)
      expect(new Set(records).size).toBe(records.length)
      expect([...acked].filter((i) => !records.includes(i))).toEqual([])
      expect(records.length).toBe(stored)
      process.stdout.write(`  full disk: ${acked.size} acknowledged before the 1 MiB journal filesystem was full, all stored; ingestion resumed\n`)
    } finally {
      await gw.sg.close()
      try { execFileSync('umount', ['-l', journalDir], { stdio: 'ignore' }) } catch { /* already */ }
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 120_000)
})
