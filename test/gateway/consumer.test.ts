// The sink consumer's batching: it lingers after a small batch only when that batch took everything
// committed before it was read, so a backlog cut into batches by maxEntries drains at once instead of
// a batch per linger. And a consumer whose checkpoint is older than the journal holds says what it skipped.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it } from 'vitest'
import { Catalog, type Dataset, Journal, type Sink, SinkConsumer, type SinkEntry } from '../../gateway/index.js'

const dataset = { id: 'lin', version: 1, schema: { tags: [], fields: { n: 'long' } }, sinceSeq: 0 } as unknown as Dataset

class RecordingSink implements Sink {
  readonly name = 'recording'
  readonly batches: { at: number, entries: number }[] = []
  async checkpoint (): Promise<number> { return 0 }
  async prepareDataset (): Promise<void> {}
  async dropDataset (): Promise<void> {}
  async write (entries: readonly SinkEntry[]): Promise<void> { this.batches.push({ at: performance.now(), entries: entries.length }) }
}

const cleanup: (() => Promise<void>)[] = []
afterEach(async () => { for (const c of cleanup.splice(0)) await c() })

async function rig (entries: number): Promise<{ journal: Journal, sink: RecordingSink, consumer: SinkConsumer, append: (n: number) => Promise<void> }> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-consumer-'))
  const { journal } = await Journal.open({ dir, maxBytes: 1 << 30, segmentBytes: 1 << 26 })
  const catalog = new Catalog({ maxBatch: 1000, maxString: 1000 })
  catalog.put(dataset)
  const sink = new RecordingSink()
  const consumer = new SinkConsumer(journal, sink, catalog, { maxEntries: 100, maxRows: 10_000, lingerMs: 1000 })
  const append = (n: number): Promise<void> => new Promise((resolve, reject) => {
    let left = n
    for (let i = 0; i < n; i++) {
      journal.append({ arrivalUs: Date.now() * 1000, dataset: 'lin', version: 1, device: 'd', principal: 'p', payload: Buffer.from(`{"n":${i}}`) }, (err) => {
        if (err !== null) reject(err)
        else if (--left === 0) resolve()
      })
    }
  })
  await append(entries)
  cleanup.push(async () => { await consumer.close(); await journal.close(); fs.rmSync(dir, { recursive: true, force: true }) })
  return { journal, sink, consumer, append }
}

describe('sink consumer batching', () => {
  it('drains a backlog batch after batch without lingering, then lingers once caught up', async () => {
    const { journal, sink, consumer, append } = await rig(1000)
    const t0 = performance.now()
    await consumer.start()
    await consumer.waitFor(journal.committedSeq, 5000)
    // Ten batches of maxEntries, well inside one linger (1 s).
    expect(sink.batches.map((b) => b.entries)).toEqual(Array(10).fill(100))
    expect(performance.now() - t0).toBeLessThan(900)
    // Caught up: a small batch now, and the next one waits out the linger.
    await append(5)
    await consumer.waitFor(journal.committedSeq, 5000)
    const small = sink.batches.at(-1)!
    await append(5)
    await consumer.waitFor(journal.committedSeq, 5000)
    expect(sink.batches.at(-1)!.at - small.at).toBeGreaterThanOrEqual(900)
  })
})

describe('sink consumer resuming behind the journal', () => {
  it('warns of the entries deleted before it read them, and goes on from the oldest the journal holds', async () => {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-consumer-'))
    const { journal } = await Journal.open({ dir, maxBytes: 1 << 30, segmentBytes: 64 * 1024 })
    const catalog = new Catalog({ maxBatch: 1000, maxString: 1000 })
    catalog.put(dataset)
    const payload = Buffer.from(`{"n":1${' '.repeat(1000)}}`)
    // Ten commits of 30 entries (~33 KB each): a new segment every two.
    for (let c = 0; c < 10; c++) {
      await new Promise<void>((resolve, reject) => {
        let left = 30
        for (let i = 0; i < 30; i++) {
          journal.append({ arrivalUs: Date.now() * 1000, dataset: 'lin', version: 1, device: 'd', principal: 'p', payload }, (err) => {
            if (err !== null) reject(err)
            else if (--left === 0) resolve()
          })
        }
      })
    }
    // The only registered consumer has everything: the segments before the active one are deleted.
    journal.ack('store', journal.committedSeq)
    const first = journal.segmentsFrom(0)[0]!.firstSeq
    expect(first).toBeGreaterThan(1)

    // A sink left off all along (its checkpoint 0), turned on now.
    const sink = new RecordingSink()
    const seqs: number[] = []
    sink.write = async (entries) => { for (const e of entries) seqs.push(e.seq) }
    const warnings: { obj: object, msg: string }[] = []
    const consumer = new SinkConsumer(journal, sink, catalog, { maxEntries: 1000, maxRows: 10_000, lingerMs: 0, log: { warn: (obj, msg) => warnings.push({ obj, msg }) } })
    cleanup.push(async () => { await consumer.close(); await journal.close(); fs.rmSync(dir, { recursive: true, force: true }) })
    await consumer.start()
    await consumer.waitFor(journal.committedSeq, 5000)
    expect(seqs[0]).toBe(first)
    expect(seqs.length).toBe(300 - first + 1)
    expect(warnings).toEqual([{ obj: { consumer: 'recording', from: 1, to: first - 1 }, msg: expect.stringContaining('skipped') }])
  })
})

describe('sink consumer reading ahead', () => {
  const gone = { id: 'gone', version: 1, schema: { tags: [], fields: { n: 'long' } }, sinceSeq: 0 } as unknown as Dataset

  /** A sink whose writes wait for release() (each one), or fail while `failing`. */
  class GatedSink extends RecordingSink {
    readonly written: SinkEntry[][] = []
    failing = false
    private opened: (() => void)[] = []
    waiting = 0
    release (): void { for (const o of this.opened.splice(0)) o() }
    override async write (entries: readonly SinkEntry[]): Promise<void> {
      this.waiting++
      await new Promise<void>((resolve) => this.opened.push(resolve))
      this.waiting--
      if (this.failing) throw new Error('refused')
      this.written.push([...entries])
    }
  }

  /** 300 entries alternating between datasets `lin` and `gone`; reads of the journal counted. */
  async function gatedRig (maxRows = 10_000): Promise<{ journal: Journal, catalog: Catalog, sink: GatedSink, consumer: SinkConsumer, reads: () => number }> {
    const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-consumer-'))
    const { journal } = await Journal.open({ dir, maxBytes: 1 << 30, segmentBytes: 1 << 26 })
    const catalog = new Catalog({ maxBatch: 1000, maxString: 1000 })
    catalog.put(dataset)
    catalog.put(gone)
    await new Promise<void>((resolve, reject) => {
      let left = 300
      for (let i = 0; i < 300; i++) {
        journal.append({ arrivalUs: Date.now() * 1000, dataset: i % 2 === 0 ? 'lin' : 'gone', version: 1, device: 'd', principal: 'p', payload: Buffer.from(`{"n":${i}}`) }, (err) => {
          if (err !== null) reject(err)
          else if (--left === 0) resolve()
        })
      }
    })
    let reads = 0
    const open = journal.reader.bind(journal)
    journal.reader = (from) => {
      const r = open(from)
      const read = r.read.bind(r)
      r.read = (n) => { reads++; return read(n) }
      return r
    }
    const sink = new GatedSink()
    const consumer = new SinkConsumer(journal, sink, catalog, { maxEntries: 100, maxRows, lingerMs: 0, retryMinMs: 5, retryMaxMs: 5 })
    cleanup.push(async () => { sink.failing = false; const t = setInterval(() => sink.release(), 1); await consumer.close(); clearInterval(t); await journal.close(); fs.rmSync(dir, { recursive: true, force: true }) })
    return { journal, catalog, sink, consumer, reads: () => reads }
  }

  const until = async (cond: () => boolean): Promise<void> => {
    const deadline = Date.now() + 5000
    while (!cond()) {
      if (Date.now() > deadline) throw new Error('timed out')
      await new Promise((resolve) => setTimeout(resolve, 1))
    }
  }

  it('reads and decodes the next batch while a write is in flight, and writes the batches in order', async () => {
    const { journal, sink, consumer, reads } = await gatedRig()
    await consumer.start()
    await until(() => sink.waiting === 1)
    // The first batch is being written; the second has been read meanwhile, and nothing more.
    await until(() => reads() === 2)
    await new Promise((resolve) => setTimeout(resolve, 20))
    expect(reads()).toBe(2)
    expect(consumer.checkpoint).toBe(0)
    for (let b = 1; b <= 3; b++) {
      await until(() => sink.waiting === 1)
      sink.release()
      await until(() => sink.written.length === b)
    }
    await consumer.waitFor(journal.committedSeq, 5000)
    expect(sink.written.flat().map((e) => e.seq)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1))
    expect(sink.written.map((b) => b.length)).toEqual([100, 100, 100])
  })

  it('reads ahead from where a batch cut short by maxRows ended', async () => {
    const { journal, sink, consumer } = await gatedRig(70)
    await consumer.start()
    const released = setInterval(() => sink.release(), 1)
    try {
      await consumer.waitFor(journal.committedSeq, 5000)
    } finally {
      clearInterval(released)
    }
    expect(sink.written.map((b) => b.length)).toEqual([70, 70, 70, 70, 20])
    expect(sink.written.flat().map((e) => e.seq)).toEqual(Array.from({ length: 300 }, (_, i) => i + 1))
  })

  it('closes the reader only once a read in flight has ended', async () => {
    const { sink, consumer, journal } = await gatedRig()
    const open = journal.reader.bind(journal)
    let inFlight = 0
    let closedDuringRead = false
    journal.reader = (from) => {
      const r = open(from)
      const read = r.read.bind(r)
      const close = r.close.bind(r)
      r.read = async (n) => { inFlight++; await new Promise((resolve) => setTimeout(resolve, 50)); try { return await read(n) } finally { inFlight-- } }
      r.close = async () => { if (inFlight > 0) closedDuringRead = true; await close() }
      return r
    }
    await consumer.start()
    await until(() => sink.waiting === 1 && inFlight === 1)
    const closing = consumer.close()
    sink.release()
    await closing
    expect(closedDuringRead).toBe(false)
    expect(sink.written.length).toBe(1)
  })

  it('decodes a batch read ahead again when a dataset was dropped before it is written', async () => {
    const { journal, catalog, sink, consumer, reads } = await gatedRig()
    await consumer.start()
    await until(() => sink.waiting === 1 && reads() === 2)
    // Dropped while the first batch is written and the second was decoded with it.
    catalog.delete('gone')
    for (let b = 1; b <= 3; b++) {
      await until(() => sink.waiting === 1)
      sink.release()
      await until(() => sink.written.length === b)
    }
    await consumer.waitFor(journal.committedSeq, 5000)
    // The first batch was on its way with both datasets; the others hold `lin` only.
    expect(sink.written[0]!.map((e) => e.dataset)).toContain('gone')
    expect(sink.written.slice(1).flat().map((e) => e.dataset)).toEqual(Array(100).fill('lin'))
    expect(consumer.status().skipped).toBe(100)
  })
})
