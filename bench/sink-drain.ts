// How fast the sink stores what the journal holds (`npm run bench -- --sink`): fills a journal with
// batches of readings (ENTRIES messages of PER readings), then times a SinkConsumer draining it into
// the embedded store, with no broker and no load generators beside it. Prints rows/s, the process's
// CPU, and the part of the time spent in the store's write (the rest is reading and decoding).
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { RecordStore } from '../bridges/index.js'
import { Catalog, type Dataset, Journal, SinkConsumer } from '../gateway/index.js'

const ENTRIES = Number(process.env.ENTRIES ?? 10_000)
const PER = Number(process.env.PER ?? 100)
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-drain-'))
const limits = { maxBatch: 100_000, maxString: 4096 }
const dataset = { id: 'bench', version: 1, schema: { tags: ['site'], fields: { temp: 'double', hum: 'double', pressure: 'double', t: 'double' } }, sinceSeq: 0 } as unknown as Dataset

async function main (): Promise<void> {
  const { journal } = await Journal.open({ dir: path.join(dir, 'journal'), maxBytes: 8 * 1024 ** 3, segmentBytes: 64 * 1024 * 1024 })
  const reading = (i: number): object => ({ site: 's' + (i % 10), temp: 21.5 + i % 7, hum: 40.25, pressure: 1013.2, t: Date.now() + i })
  let n = 0
  await new Promise<void>((resolve, reject) => {
    for (let e = 0; e < ENTRIES; e++) {
      const payload = Buffer.from(JSON.stringify(Array.from({ length: PER }, (_, i) => reading(e * PER + i))))
      journal.append({ arrivalUs: Date.now() * 1000, dataset: 'bench', version: 1, device: 'dev' + (e % 10), principal: 'p', payload }, (err) => {
        if (err !== null) reject(err)
        else if (++n === ENTRIES) resolve()
      })
    }
  })
  const store = await RecordStore.open({ dataDir: path.join(dir, 'store'), memoryLimit: process.env.STREAMGATE_STORE_MEMORY ?? '512MB', cacheLimit: process.env.STREAMGATE_STORE_CACHE ?? '64MB' })
  const catalog = new Catalog(limits)
  catalog.put(dataset)
  await store.prepareDataset(dataset)
  let writeMs = 0
  const write = store.write.bind(store)
  store.write = async (entries, lastSeq) => {
    const t = performance.now()
    await write(entries, lastSeq)
    writeMs += performance.now() - t
  }
  const consumer = new SinkConsumer(journal, store, catalog, { maxEntries: 5000, maxRows: Number(process.env.BATCH ?? 100_000), lingerMs: 0 })
  const cpu0 = process.cpuUsage()
  const t0 = performance.now()
  await new Promise<void>((resolve) => {
    consumer.on('progress', (seq: number) => { if (seq >= ENTRIES) resolve() })
    void consumer.start()
  })
  const s = (performance.now() - t0) / 1000
  const cpu = process.cpuUsage(cpu0)
  const rows = (await store.stats(dataset)).stored

  process.stdout.write(`${rows} rows in ${s.toFixed(2)} s: ${Math.round(rows / s)} rows/s; process CPU ${((cpu.user + cpu.system) / 1e6 / s * 100).toFixed(0)}%; in store.write ${(writeMs / 1000).toFixed(2)} s\n`)
  await consumer.close()
  await store.close()
  await journal.close()
  fs.rmSync(dir, { recursive: true, force: true })
}
main().catch((err) => { console.error(err); process.exit(1) })
