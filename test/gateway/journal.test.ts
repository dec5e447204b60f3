import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { afterEach, describe, expect, it, vi } from 'vitest'
import { Journal, JournalFollower, JournalFullError, JournalReader, type JournalRecord } from '../../gateway/journal.js'
import { waitUntil } from '../helpers.js'

const dirs: string[] = []
function tmpDir (): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-journal-'))
  dirs.push(d)
  return d
}
afterEach(() => { for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true }) })

function rec (i: number, size = 20): JournalRecord {
  const payload = Buffer.from(JSON.stringify({ i, pad: 'x'.repeat(size) }))
  return { arrivalUs: 1_700_000_000_000_000 + i, dataset: 'ds', version: 1, device: 'dev-' + (i % 3), principal: 'p1', payload }
}

function appendAll (j: Journal, records: JournalRecord[]): Promise<(Error | null)[]> {
  return Promise.all(records.map((r) => new Promise<Error | null>((resolve) => j.append(r, resolve))))
}

/** The `i` of every record in the journal, read from its first entry on. */
async function readIs (journal: Journal): Promise<number[]> {
  const reader = journal.reader(1)
  const seen: number[] = []
  for (let got = await reader.read(1000); got.length > 0; got = await reader.read(1000)) for (const e of got) seen.push(JSON.parse(e.payload.toString()).i)
  await reader.close()
  return seen
}

/** A reader of `journal` as the sink thread reads it: segments listed from `dir`, the committed point from the writer. */
async function followerReader (journal: Journal, dir: string): Promise<JournalReader> {
  const follower = new JournalFollower(dir)
  await follower.refresh()
  return new JournalReader({ get committedSeq () { return journal.committedSeq }, segmentsFrom: (s: number) => follower.segmentsFrom(s), refresh: () => follower.refresh() }, 1)
}

const opts = (dir: string, extra: Partial<Parameters<typeof Journal.open>[0]> = {}) => ({ dir, maxBytes: 1 << 30, segmentBytes: 1 << 20, ...extra })

describe('journal', () => {
  it('acknowledges appends after a shared fsync, in order, and reads them back', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir))
    const errs = await appendAll(journal, Array.from({ length: 1000 }, (_, i) => rec(i)))
    expect(errs.every((e) => e === null)).toBe(true)
    expect(journal.committedSeq).toBe(1000)
    // group commit: 1,000 appends in one turn share far fewer fsyncs
    expect(journal.stats.commits).toBeLessThan(10)
    const reader = journal.reader(1)
    const entries = await reader.read(5000)
    await reader.close()
    expect(entries.map((e) => e.seq)).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1))
    expect(JSON.parse(entries[999]!.payload.toString()).i).toBe(999)
    await journal.close()
    await journal.close()
  })

  it('recovers after reopen, reads from disk across segments and continues the sequence', async () => {
    const dir = tmpDir()
    const a = await Journal.open(opts(dir, { segmentBytes: 64 * 1024 }))
    for (let batch = 0; batch < 20; batch++) await appendAll(a.journal, Array.from({ length: 100 }, (_, i) => rec(batch * 100 + i, 200)))
    await a.journal.close()
    const b = await Journal.open(opts(dir, { segmentBytes: 64 * 1024 }))
    expect(b.recovery.nextSeq).toBe(2001)
    expect(b.recovery.segments).toBeGreaterThan(3)
    const reader = b.journal.reader(150)
    const seen: number[] = []
    for (;;) {
      const got = await reader.read(333)
      if (got.length === 0) break
      for (const e of got) seen.push(e.seq)
    }
    expect(seen).toEqual(Array.from({ length: 1851 }, (_, i) => i + 150))
    await reader.close()
    await appendAll(b.journal, [rec(5000)])
    expect(b.journal.committedSeq).toBe(2001)
    await b.journal.close()
  })

  it('drops a torn tail, and an entry with a flipped byte alone, at recovery, keeping every complete entry', async () => {
    const dir = tmpDir()
    const a = await Journal.open(opts(dir))
    await appendAll(a.journal, Array.from({ length: 10 }, (_, i) => rec(i)))
    await a.journal.close()
    const file = path.join(dir, fs.readdirSync(dir)[0]!)
    const full = fs.statSync(file).size
    fs.truncateSync(file, full - 7) // a partial last write
    const b = await Journal.open(opts(dir))
    expect(b.recovery.nextSeq).toBe(10)
    expect(b.recovery.truncatedBytes).toBeGreaterThan(0)
    await b.journal.close()
    expect(b.recovery.droppedSeqs).toEqual([])
    // flip one byte inside entry 5's payload: entry 5 alone is dropped, and reported
    const buf = fs.readFileSync(file)
    let off = 0
    for (let i = 0; i < 4; i++) off += 8 + buf.readUInt32LE(off)
    buf[off + 8 + 30] = buf[off + 8 + 30]! ^ 0xff
    fs.writeFileSync(file, buf)
    const c = await Journal.open(opts(dir))
    expect(c.recovery.droppedSeqs).toEqual([5])
    expect(c.recovery.nextSeq).toBe(10)
    const reader = c.journal.reader(1)
    const entries = await reader.read(100)
    await reader.close()
    expect(entries.map((e) => e.seq)).toEqual([1, 2, 3, 4, 6, 7, 8, 9])
    // and appends continue after them
    await appendAll(c.journal, [rec(100)])
    expect(c.journal.committedSeq).toBe(10)
    await c.journal.close()
    // a reader of a segment damaged later (bit rot) steps over the entry and counts it
    const d = await Journal.open(opts(dir))
    const raw = fs.readFileSync(file)
    let at = 0
    for (let i = 0; i < 2; i++) at += 8 + raw.readUInt32LE(at)
    raw[at + 8 + 30] = raw[at + 8 + 30]! ^ 0xff
    fs.writeFileSync(file, raw)
    const r2 = d.journal.reader(1)
    expect((await r2.read(100)).map((e) => e.seq)).toEqual([1, 2, 4, 6, 7, 8, 9, 10])
    expect(r2.corrupt).toBe(1)
    await r2.close()
    await d.journal.close()
  })

  it('a read that fails after some entries returns them, and the next read fails where it stopped', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir))
    await appendAll(journal, Array.from({ length: 10 }, (_, i) => rec(i)))
    // Entries 4 and 5 damaged after they were committed: no sound entry to step on to from 4.
    const file = path.join(dir, fs.readdirSync(dir).filter((f) => f.endsWith('.seg'))[0]!)
    const raw = fs.readFileSync(file)
    let at = 0
    for (let i = 0; i < 3; i++) at += 8 + raw.readUInt32LE(at)
    const fifth = at + 8 + raw.readUInt32LE(at)
    raw[at + 8 + 30] = raw[at + 8 + 30]! ^ 0xff
    raw[fifth + 8 + 30] = raw[fifth + 8 + 30]! ^ 0xff
    fs.writeFileSync(file, raw)
    const reader = journal.reader(1)
    expect((await reader.read(100)).map((e) => e.seq)).toEqual([1, 2, 3])
    await expect(reader.read(100)).rejects.toThrow(/corrupt/)
    await expect(reader.read(100)).rejects.toThrow(/corrupt/)
    await reader.close()
    await journal.close()
  })

  it('starts a new segment when consumers are ahead of the journal on disk, and reads across the gap', async () => {
    const dir = tmpDir()
    const a = await Journal.open(opts(dir, { }))
    await appendAll(a.journal, Array.from({ length: 5 }, (_, i) => rec(i)))
    await a.journal.close()
    // The store says it already has up to 50 (part of the journal was lost): new entries start at 51.
    const b = await Journal.open(opts(dir, { floorSeq: 50 }))
    expect(b.recovery.nextSeq).toBe(51)
    await appendAll(b.journal, [rec(100), rec(101)])
    await b.journal.close()
    const c = await Journal.open(opts(dir, { }))
    expect(c.recovery.nextSeq).toBe(53)
    const reader = c.journal.reader(1)
    const seqs: number[] = []
    for (let i = 0; i < 5; i++) seqs.push(...(await reader.read(100)).map((e) => e.seq))
    await reader.close()
    expect(seqs).toEqual([1, 2, 3, 4, 5, 51, 52])
    await c.journal.close()
  })

  it('refuses appends beyond the quota and accepts again once consumers free segments', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir, { maxBytes: 64 * 1024, segmentBytes: 16 * 1024 }))
    journal.register('sink', 0)
    let refused = 0
    for (let i = 0; i < 400; i++) {
      const [err] = await appendAll(journal, [rec(i, 200)])
      if (err instanceof JournalFullError) refused++
    }
    expect(refused).toBeGreaterThan(0)
    expect(journal.bytes).toBeLessThanOrEqual(64 * 1024)
    journal.ack('sink', journal.committedSeq)
    const [err] = await appendAll(journal, [rec(1000, 200)])
    expect(err).toBeNull()
    await journal.close()
  })

  it('calls `written` once the write returned, while the fdatasync still runs, and never for a failed write', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir))
    // A slow disk: every fdatasync takes 300 ms longer.
    const syncer = (journal as unknown as { syncer: { fdatasync: (fd: number, cb: (err: Error | null) => void) => void } }).syncer
    const sync = syncer.fdatasync.bind(syncer)
    syncer.fdatasync = (fd, cb) => { setTimeout(() => sync(fd, cb), 300) }
    const events: string[] = []
    let onDisk = 0
    const done = Promise.all([1, 2, 3].map((i) => new Promise<void>((resolve) => journal.append(rec(i), (err) => {
      events.push(`durable ${i} ${err === null}`)
      resolve()
    }, () => {
      events.push(`written ${i} committed=${journal.committedSeq}`)
      onDisk = fs.statSync(path.join(dir, fs.readdirSync(dir)[0]!)).size
    }))))
    await waitUntil(() => events.length === 3, 200, 'the written callbacks, before the fdatasync returns')
    expect(events).toEqual(['written 1 committed=0', 'written 2 committed=0', 'written 3 committed=0'])
    expect(onDisk).toBeGreaterThan(0)
    await done
    expect(events.slice(3)).toEqual(['durable 1 true', 'durable 2 true', 'durable 3 true'])

    // A write that fails (here: the segment opened read-only under it, EBADF) is refused, and never "written".
    const j = journal as unknown as { fd: number }
    const fd = j.fd
    j.fd = fs.openSync(path.join(dir, fs.readdirSync(dir)[0]!), 'r')
    let written = false
    const err = await new Promise<Error | null>((resolve) => journal.append(rec(4), resolve, () => { written = true }))
    expect(err?.message).toMatch(/journal write failed/)
    expect(written).toBe(false)
    fs.closeSync(j.fd)
    j.fd = fd
    await journal.close()
  })

  it('writes a commit at once while an earlier one is being fdatasync\'d, and one fdatasync then covers all written meanwhile', async () => {
    const dir = tmpDir()
    // Small segments: commits also roll to new files while others wait for their fdatasync.
    const { journal } = await Journal.open(opts(dir, { segmentBytes: 4 * 1024 }))
    const syncer = (journal as unknown as { syncer: { fdatasync: (fd: number, cb: (err: Error | null) => void) => void } }).syncer
    const sync = syncer.fdatasync.bind(syncer)
    let syncs = 0
    syncer.fdatasync = (fd, cb) => { syncs++; setTimeout(() => sync(fd, cb), 200) }
    const events: string[] = []
    const append = (i: number): Promise<void> => new Promise((resolve) => journal.append(rec(i), (err) => {
      events.push(`durable ${i} ${err === null}`)
      resolve()
    }, () => events.push(`written ${i}`)))
    const first = append(1)
    await waitUntil(() => events.includes('written 1'), 100, 'the first write')
    // Three more commits, in three event-loop turns, while the first fdatasync runs.
    const later: Promise<void>[] = []
    for (const i of [2, 3, 4]) {
      later.push(append(i))
      await new Promise((resolve) => setImmediate(resolve))
    }
    await waitUntil(() => events.includes('written 4'), 100, 'writes while an fdatasync is in flight')
    expect(events).toEqual(['written 1', 'written 2', 'written 3', 'written 4'])
    expect(syncs).toBe(1)
    await Promise.all([first, ...later])
    expect(events.slice(4)).toEqual(['durable 1 true', 'durable 2 true', 'durable 3 true', 'durable 4 true'])
    expect(syncs).toBe(2)
    expect(journal.stats.commits).toBe(2) // group commits: one per fdatasync

    // Many commits across segment boundaries with a slow disk: every one durable, in order, and read back after a restart.
    // (A commit that needs a new segment waits for the commits in the old one to be durable.)
    const n = 200
    const acked: number[] = []
    for (let round = 0; round < 4; round++) {
      const all: Promise<void>[] = []
      for (let i = 5 + round * 50; i < 5 + (round + 1) * 50; i++) {
        all.push(new Promise((resolve) => journal.append(rec(i, 100), (err) => { expect(err).toBeNull(); acked.push(i); resolve() })))
        if (i % 10 === 0) await new Promise((resolve) => setImmediate(resolve))
      }
      await Promise.all(all)
    }
    expect(acked).toEqual(Array.from({ length: n }, (_, k) => k + 5))
    await journal.close()
    const reopened = await Journal.open(opts(dir, { segmentBytes: 4 * 1024 }))
    expect(reopened.recovery.segments).toBeGreaterThan(3)
    expect(await readIs(reopened.journal)).toEqual(Array.from({ length: n + 4 }, (_, k) => k + 1))
    await reopened.journal.close()
  })

  it('starts an fdatasync at most every syncIntervalUs: commits written inside the window share the next one', async () => {
    const dir = tmpDir()
    const windowMs = 1000
    const { journal } = await Journal.open(opts(dir, { syncIntervalUs: windowMs * 1000 }))
    const written: number[] = []
    const append = (i: number): Promise<void> => new Promise((resolve, reject) => journal.append(rec(i), (err) => {
      if (err !== null) reject(err)
      else resolve()
    }, () => written.push(i)))
    const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))
    // A first commit (it starts the sync thread, which can take a while on a busy machine), then a
    // quiet spell longer than the window.
    await append(1)
    await new Promise((resolve) => setTimeout(resolve, windowMs + 50))
    const syncer = (journal as unknown as { syncer: { fdatasync: (fd: number, cb: (err: Error | null) => void) => void } }).syncer
    const sync = syncer.fdatasync.bind(syncer)
    const starts: number[] = []
    syncer.fdatasync = (fd, cb) => { starts.push(performance.now()); sync(fd, cb) }

    // After a quiet spell a commit is synced at once.
    const t0 = performance.now()
    await append(2)
    expect(starts).toHaveLength(1)
    expect(starts[0]! - t0).toBeLessThan(windowMs / 2)
    // Three commits in three turns inside the window: each written at once (the live fan-out does not
    // wait), all made durable by one fdatasync once the window closes.
    const later: Promise<void>[] = []
    for (const i of [3, 4, 5]) {
      later.push(append(i))
      await turn()
    }
    expect(written).toEqual([1, 2, 3, 4, 5])
    expect(starts).toHaveLength(1)
    await Promise.all(later)
    expect(starts).toHaveLength(2)
    expect(starts[1]! - starts[0]!).toBeGreaterThanOrEqual(windowMs - 1)
    expect(journal.committedSeq).toBe(5)

    // Closing while a commit waits for the window: it is made durable first.
    const last = append(6)
    await turn()
    expect(starts).toHaveLength(2)
    await journal.close()
    await last
    expect(starts).toHaveLength(3)
    const reopened = await Journal.open(opts(dir))
    expect(reopened.recovery.nextSeq).toBe(7)
    await reopened.journal.close()
  })

  it('refuses a sync window that is not a finite number of µs, 0 or more', async () => {
    for (const bad of [Number.NaN, Infinity, -1]) {
      await expect(Journal.open(opts(tmpDir(), { syncIntervalUs: bad }))).rejects.toThrow(/syncIntervalUs/)
    }
  })

  it('with a sync window, commits across segment boundaries are all durable, in order, and read back after a restart', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir, { segmentBytes: 4 * 1024, syncIntervalUs: 2000 }))
    const acked: number[] = []
    const append = (i: number): Promise<void> => new Promise((resolve, reject) => journal.append(rec(i, 100), (err) => {
      if (err !== null) { reject(err); return }
      acked.push(i)
      resolve()
    }))
    // Rounds of two commits of five entries, the second a turn later (inside the first's window, or
    // needing a new segment while the first's fdatasync runs); each round waits for its own, so no
    // commit grows beyond ten entries and a 4 KiB segment holds a few rounds whatever the machine's speed.
    for (let round = 0; round < 30; round++) {
      const mine: Promise<void>[] = []
      for (let k = 1; k <= 10; k++) {
        mine.push(append(round * 10 + k))
        if (k === 5) await new Promise((resolve) => setImmediate(resolve))
      }
      await Promise.all(mine)
    }
    expect(acked).toEqual(Array.from({ length: 300 }, (_, k) => k + 1))
    await journal.close()
    const reopened = await Journal.open(opts(dir, { segmentBytes: 4 * 1024 }))
    expect(reopened.recovery.segments).toBeGreaterThan(5)
    expect(await readIs(reopened.journal)).toEqual(Array.from({ length: 300 }, (_, k) => k + 1))
    await reopened.journal.close()
  })
})

describe('journal followed from another reader (the sink thread)', () => {
  it('reads every entry exactly once while segments rotate and consumed ones are deleted', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir, { segmentBytes: 16 * 1024 }))
    journal.register('follower', 0)
    const reader = await followerReader(journal, dir)
    const seen: number[] = []
    // Write in bursts while reading slowly, acknowledging as we go, so the follower's listing is
    // repeatedly stale: segments it listed are deleted and new ones appear between its reads.
    for (let burst = 0; burst < 40; burst++) {
      await appendAll(journal, Array.from({ length: 25 }, (_, i) => rec(burst * 25 + i, 300)))
      if (burst % 3 !== 0) continue
      for (;;) {
        const got = await reader.read(17)
        if (got.length === 0) break
        for (const e of got) seen.push(e.seq)
        journal.ack('follower', seen.at(-1)!)
      }
    }
    for (;;) {
      const got = await reader.read(100)
      if (got.length === 0) break
      for (const e of got) seen.push(e.seq)
    }
    await reader.close()
    expect(seen).toEqual(Array.from({ length: 1000 }, (_, i) => i + 1))
    expect(fs.readdirSync(dir).length).toBeLessThan(20)
    await journal.close()
  })
})

describe('journal with segments made ahead (preallocate)', () => {
  const segFiles = (dir: string): string[] => fs.readdirSync(dir).filter((n) => n.endsWith('.seg')).sort().map((n) => path.join(dir, n))
  /** The file ends with an entry (a reading's payload ends in "}"), not with zeros. */
  const endsWithEntry = (file: string): boolean => { const b = fs.readFileSync(file); return b.length > 0 && b[b.length - 1] === 0x7d }

  it('writes over a zero-filled segment made ahead, cuts the zeros when it rolls and closes, while a follower reads every entry once', async () => {
    const dir = tmpDir()
    const SEG = 16 * 1024
    const { journal } = await Journal.open(opts(dir, { segmentBytes: SEG, preallocate: true }))
    // The first segment was made ahead: its file is a segment of zeros before anything is written.
    expect(segFiles(dir).map((f) => fs.statSync(f).size)).toEqual([SEG])
    journal.register('follower', 0)
    const reader = await followerReader(journal, dir)
    const seen: number[] = []
    let madeAhead = 0
    for (let burst = 0; burst < 40; burst++) {
      await appendAll(journal, Array.from({ length: 10 }, (_, i) => rec(burst * 10 + i, 300)))
      const files = segFiles(dir)
      // Every segment but the one written holds its entries only; the one written is a made-ahead one
      // (a segment of zeros, overwritten) unless the roll came before the next was ready.
      for (const f of files.slice(0, -1)) expect(endsWithEntry(f)).toBe(true)
      if (fs.statSync(files.at(-1)!).size === SEG) madeAhead++
      // Reading stops at the zeros after the last entry, and goes on from there.
      for (let got = await reader.read(7); got.length > 0; got = await reader.read(7)) {
        for (const e of got) seen.push(e.seq)
        journal.ack('follower', seen.at(-1)!)
      }
      // Let the next segment be made ahead now and then.
      if (burst % 4 === 0) await waitUntil(() => fs.existsSync(path.join(dir, 'next-segment.zeros')), 5000, 'the next segment made ahead')
    }
    await reader.close()
    expect(seen).toEqual(Array.from({ length: 400 }, (_, i) => i + 1))
    expect(madeAhead).toBeGreaterThan(10)
    // Segments rolled (those consumed were deleted): the last one starts far into the sequence.
    expect(Number(path.basename(segFiles(dir).at(-1)!).slice(0, 16))).toBeGreaterThan(100)
    await journal.close()
    // Closed: the last segment holds its entries only, and the one being made ahead is gone.
    expect(endsWithEntry(segFiles(dir).at(-1)!)).toBe(true)
    expect(fs.readdirSync(dir).filter((n) => !n.endsWith('.seg'))).toEqual([])
    const reopened = await Journal.open(opts(dir, { segmentBytes: SEG, preallocate: true }))
    expect(reopened.recovery.truncatedBytes).toBe(0)
    expect(reopened.recovery.nextSeq).toBe(401)
    await reopened.journal.close()
  })

  it('a follower never looks past the committed entries, where the writer\'s next entry may be half copied over the zeros', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir, { segmentBytes: 64 * 1024, preallocate: true }))
    await appendAll(journal, Array.from({ length: 5 }, (_, i) => rec(i)))
    const reader = await followerReader(journal, dir)
    // What a read racing the next commit's write can see: a header whose length leads into zeros (its
    // sequence number not copied yet), where the entry after the committed ones will be.
    const file = segFiles(dir)[0]!
    const end = (journal as unknown as { segments: { size: number }[] }).segments.at(-1)!.size
    const half = Buffer.alloc(40)
    half.writeUInt32LE(200, 0)
    half.writeUInt32LE(0x12345678, 4)
    half[8] = 1
    const fd = fs.openSync(file, 'r+')
    fs.writeSync(fd, half, 0, half.length, end)
    fs.closeSync(fd)
    expect((await reader.read(100)).map((e) => e.seq)).toEqual([1, 2, 3, 4, 5])
    expect(await reader.read(100)).toEqual([])
    // The commit overwrites it; the follower reads on from where it stopped.
    await appendAll(journal, Array.from({ length: 3 }, (_, i) => rec(5 + i)))
    expect((await reader.read(100)).map((e) => e.seq)).toEqual([6, 7, 8])
    await reader.close()
    await journal.close()
  })

  it('stops when the fdatasync that makes a rolled segment\'s cut durable fails, as after any failed fdatasync', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir, { segmentBytes: 4 * 1024, preallocate: true }))
    await appendAll(journal, Array.from({ length: 5 }, (_, i) => rec(i, 300)))
    const failing = vi.spyOn(fs, 'fdatasyncSync').mockImplementation(() => { throw Object.assign(new Error('EIO: i/o error, fdatasync'), { code: 'EIO' }) })
    try {
      // More than the segment holds: the commit needs a roll, whose fdatasync fails.
      const errs = await appendAll(journal, Array.from({ length: 20 }, (_, i) => rec(5 + i, 300)))
      expect(failing).toHaveBeenCalled()
      expect(errs.some((e) => e !== null && /EIO/.test(e.message))).toBe(true)
      expect(journal.healthy).toBe(false)
      expect(await appendAll(journal, [rec(99)])).toEqual([expect.objectContaining({ message: expect.stringContaining('journal has failed') })])
    } finally {
      failing.mockRestore()
    }
    await journal.close()
  })

  it('recovers a segment made ahead whose entries stop short of its end (a crash): the zeros are no torn tail, and appends go on', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir, { segmentBytes: 64 * 1024, preallocate: true }))
    await appendAll(journal, Array.from({ length: 10 }, (_, i) => rec(i)))
    // The files as a crash would leave them: entries, then the made-ahead segment's zeros.
    const crashed = tmpDir()
    for (const n of fs.readdirSync(dir)) fs.copyFileSync(path.join(dir, n), path.join(crashed, n))
    await journal.close()
    expect(fs.statSync(segFiles(crashed)[0]!).size).toBe(64 * 1024)
    const { journal: again, recovery } = await Journal.open(opts(crashed, { segmentBytes: 64 * 1024, preallocate: true }))
    expect(recovery).toMatchObject({ entries: 10, truncatedBytes: 0, droppedSeqs: [], nextSeq: 11 })
    expect(await appendAll(again, [rec(10), rec(11)])).toEqual([null, null])
    expect(await readIs(again)).toEqual(Array.from({ length: 12 }, (_, i) => i))
    await again.close()
  })
})

describe('journal reader', () => {
  it('resumes inside its last read after a seek back, and bounds a read by payload bytes', async () => {
    const dir = tmpDir()
    const { journal } = await Journal.open(opts(dir))
    await appendAll(journal, Array.from({ length: 300 }, (_, i) => rec(i, 100)))
    const reader = journal.reader(1)
    const first = await reader.read(100)
    expect(first.map((e) => e.seq)).toEqual(Array.from({ length: 100 }, (_, i) => i + 1))
    // A consumer that used only 37 of them asks for the rest again.
    reader.seek(38)
    const again = await reader.read(10)
    expect(again.map((e) => e.seq)).toEqual(Array.from({ length: 10 }, (_, i) => i + 38))
    expect(JSON.parse(again[0]!.payload.toString()).i).toBe(37)
    // Further back than the last read: from the segment's start, stepping over what comes before.
    reader.seek(5)
    expect((await reader.read(3)).map((e) => e.seq)).toEqual([5, 6, 7])
    await reader.close()
    // Large payloads: one read stops after about 32 MiB.
    await appendAll(journal, Array.from({ length: 12 }, (_, i) => rec(1000 + i, 4 << 20)))
    const big = journal.reader(301)
    const got = await big.read(1000)
    expect(got.length).toBeGreaterThanOrEqual(8)
    expect(got.length).toBeLessThan(12)
    await big.close()
    await journal.close()
  })
})

describe('journal replicated before acknowledging', () => {
  /** A replica whose confirms the test releases (or fails) one commit at a time, in any order. */
  function scriptedReplica (): { replicate: NonNullable<Parameters<typeof Journal.open>[0]['replicate']>, commits: { firstSeq: number, lastSeq: number, ok: () => void, fail: (e: Error) => void }[] } {
    const commits: { firstSeq: number, lastSeq: number, ok: () => void, fail: (e: Error) => void }[] = []
    return {
      commits,
      replicate: (c) => new Promise<void>((resolve, reject) => { commits.push({ firstSeq: c.firstSeq, lastSeq: c.lastSeq, ok: resolve, fail: reject }) })
    }
  }
  const settle = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 30))
  /** Waits until `n` commits were written, fdatasync'd and handed to the replica (a busy disk takes longer). */
  const sent = (r: ReturnType<typeof scriptedReplica>, n: number): Promise<void> => waitUntil(() => r.commits.length >= n, 10_000, `${n} commits sent to the replica`)

  it('acknowledges commits in order, each only once its replica confirmed, while later ones are already written', async () => {
    const r = scriptedReplica()
    const { journal } = await Journal.open(opts(tmpDir(), { replicate: r.replicate }))
    const acked: number[] = []
    const first = appendAll(journal, [rec(0), rec(1)]).then(() => acked.push(1))
    await sent(r, 1)
    const second = appendAll(journal, [rec(2)]).then(() => acked.push(2))
    await sent(r, 2)
    expect(r.commits.map((c) => [c.firstSeq, c.lastSeq])).toEqual([[1, 2], [3, 3]]) // both written and sent
    r.commits[1]!.ok() // the later one is confirmed first
    await settle()
    expect(acked).toEqual([])
    expect(journal.committedSeq).toBe(0)
    r.commits[0]!.ok()
    await Promise.all([first, second])
    expect(acked).toEqual([1, 2])
    expect(journal.committedSeq).toBe(3)
    await journal.close()
  })

  it('undoes a commit the replica refused, and every later one, and never uses their sequence numbers again', async () => {
    const dir = tmpDir()
    const r = scriptedReplica()
    const undone: { firstSeq: number, lastSeq: number }[] = []
    const { journal } = await Journal.open(opts(dir, { replicate: r.replicate, onUndo: (u) => undone.push(u) }))
    const ok = appendAll(journal, [rec(0)])
    await sent(r, 1)
    r.commits[0]!.ok()
    expect(await ok).toEqual([null])
    const failed = appendAll(journal, [rec(1), rec(2)])
    await sent(r, 2)
    const later = appendAll(journal, [rec(3)])
    await sent(r, 3)
    expect(r.commits.map((c) => c.firstSeq)).toEqual([1, 2, 4])
    r.commits[2]!.ok() // confirmed, but written after the one that fails: undone with it
    r.commits[1]!.fail(new Error('no confirm'))
    const errs = [...await failed, ...await later]
    expect(errs.every((e) => e instanceof Error && /journal replication failed: no confirm/.test(e.message))).toBe(true)
    expect(journal.committedSeq).toBe(1)
    expect(undone).toEqual([{ firstSeq: 2, lastSeq: 4 }])
    // The next commit skips 2-4 (a dataset created meanwhile may start after them), in a new segment.
    const next = appendAll(journal, [rec(9)])
    await sent(r, 4)
    expect(r.commits.at(-1)!.firstSeq).toBe(5)
    r.commits.at(-1)!.ok()
    expect(await next).toEqual([null])
    const reader = new JournalReader(journal, 1)
    const read = await reader.read(100)
    expect(read.map((e) => [e.seq, JSON.parse(e.payload.toString()).i])).toEqual([[1, 0], [5, 9]])
    await reader.close()
    await journal.close()
    // The jump survives a restart: the journal reopens at 6.
    const reopened = await Journal.open(opts(dir))
    expect(reopened.recovery.nextSeq).toBe(6)
    await reopened.journal.close()
  })

  it('undoes every commit made durable by the same fdatasync as one written after the refused commit', async () => {
    // Commits 2 and 3 are written while commit 1's fdatasync runs and share the next one; commit 1's
    // replica refuses meanwhile. The undo must wait for that fdatasync and cut both, not send 3 on.
    const dir = tmpDir()
    const r = scriptedReplica()
    const undone: { firstSeq: number, lastSeq: number }[] = []
    const { journal } = await Journal.open(opts(dir, { replicate: r.replicate, onUndo: (u) => undone.push(u) }))
    const syncer = (journal as unknown as { syncer: { fdatasync: (fd: number, cb: (err: Error | null) => void) => void } }).syncer
    const sync = syncer.fdatasync.bind(syncer)
    syncer.fdatasync = (fd, cb) => { setTimeout(() => sync(fd, cb), 100) }
    const turn = (): Promise<void> => new Promise((resolve) => setImmediate(resolve))
    const results: Promise<(Error | null)[]>[] = []
    for (const i of [1, 2, 3]) {
      results.push(appendAll(journal, [rec(i)]))
      await turn()
      await turn()
    }
    await sent(r, 1)
    r.commits[0]!.fail(new Error('no confirm')) // while the fdatasync of 2 and 3 runs
    let settled = 0
    for (const p of results) void p.then(() => settled++)
    await waitUntil(() => settled === 3, 2000, 'every commit refused')
    const errs = (await Promise.all(results)).flat()
    expect(r.commits).toHaveLength(1)
    expect(errs.every((e) => e instanceof Error && /journal replication failed: no confirm/.test(e.message))).toBe(true)
    expect(r.commits.map((c) => c.firstSeq)).toEqual([1])
    expect(undone).toEqual([{ firstSeq: 1, lastSeq: 3 }])
    expect(journal.committedSeq).toBe(0)
    expect(journal.bytes).toBe(0)
    const next = appendAll(journal, [rec(9)])
    await sent(r, 2)
    r.commits[1]!.ok()
    expect(await next).toEqual([null])
    const reader = new JournalReader(journal, 1)
    expect((await reader.read(100)).map((e) => [e.seq, JSON.parse(e.payload.toString()).i])).toEqual([[4, 9]])
    await reader.close()
    await journal.close()
  })
})
