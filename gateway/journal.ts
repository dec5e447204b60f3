// The journal: an append-only segmented log with group commit. An append's callback fires only after
// its bytes are written and fdatasync'd, so "ack means durable" holds for every protocol.
//
// Entry layout (little endian):
//   u32 bodyLen | u32 crc32(body) | body
//   body = u8 format(1) | u8 dsLen | u8 devLen | u8 principalLen | u32 version | f64 seq | f64 arrivalUs
//          | dataset | device | principal (ASCII ids) | payload (bytes as received)
//
// Segments are files named by their first sequence number. Recovery scans the last segment, keeps every
// entry whose length and checksum hold and truncates the rest (a torn tail from a crash mid-write).
import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { crc32 } from 'node:zlib'
import type { Row } from './datasets.js'
import { StreamgateError } from './errors.js'

export interface JournalRecord {
  readonly arrivalUs: number
  readonly dataset: string
  readonly version: number
  readonly device: string
  readonly principal: string
  readonly payload: Buffer
  /** Rows decoded at ingest; kept in memory for consumers at the tail, never written. */
  readonly rows?: readonly Row[]
}

export interface JournalEntry extends JournalRecord {
  readonly seq: number
}

export type AppendCallback = (err: Error | null) => void

export interface JournalOptions {
  readonly dir: string
  readonly maxBytes: number
  readonly segmentBytes: number
  /** Budget (estimated bytes) of committed entries kept in memory for consumers at the tail. */
  readonly cacheBytes: number
  /** Sequence numbers at or below this were already consumed (e.g. the journal directory was lost). */
  readonly floorSeq?: number
  readonly log?: { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void }
}

export interface RecoveryReport {
  readonly segments: number
  readonly entries: number
  readonly truncatedBytes: number
  readonly nextSeq: number
}

interface Segment { readonly firstSeq: number, readonly file: string, size: number }

const HEAD = 8
const FIXED = 24
const FORMAT = 1
const READ_CHUNK = 1 << 20
const SEG_SUFFIX = '.seg'

function segmentName (firstSeq: number): string {
  return String(firstSeq).padStart(16, '0') + SEG_SUFFIX
}

function entrySize (r: JournalRecord): number {
  return HEAD + FIXED + r.dataset.length + r.device.length + r.principal.length + r.payload.length
}

function encodeInto (buf: Buffer, off: number, seq: number, r: JournalRecord): number {
  const bodyStart = off + HEAD
  buf.writeUInt8(FORMAT, bodyStart)
  buf.writeUInt8(r.dataset.length, bodyStart + 1)
  buf.writeUInt8(r.device.length, bodyStart + 2)
  buf.writeUInt8(r.principal.length, bodyStart + 3)
  buf.writeUInt32LE(r.version, bodyStart + 4)
  buf.writeDoubleLE(seq, bodyStart + 8)
  buf.writeDoubleLE(r.arrivalUs, bodyStart + 16)
  let p = bodyStart + FIXED
  p += buf.write(r.dataset, p, 'latin1')
  p += buf.write(r.device, p, 'latin1')
  p += buf.write(r.principal, p, 'latin1')
  p += r.payload.copy(buf, p)
  const bodyLen = p - bodyStart
  buf.writeUInt32LE(bodyLen, off)
  buf.writeUInt32LE(crc32(buf.subarray(bodyStart, p)), off + 4)
  return p
}

type Decoded = { entry: JournalEntry, next: number } | { entry: null, next: number, reason: 'incomplete' | 'corrupt' }

/** Decodes the entry at `off`; 'incomplete' when the buffer ends first, 'corrupt' on a bad length or checksum. */
function decodeAt (buf: Buffer, off: number): Decoded {
  if (off + HEAD > buf.length) return { entry: null, next: off, reason: 'incomplete' }
  const bodyLen = buf.readUInt32LE(off)
  if (bodyLen < FIXED) return { entry: null, next: off, reason: 'corrupt' }
  const bodyStart = off + HEAD
  const end = bodyStart + bodyLen
  if (end > buf.length) return { entry: null, next: off, reason: 'incomplete' }
  if (crc32(buf.subarray(bodyStart, end)) !== buf.readUInt32LE(off + 4) || buf.readUInt8(bodyStart) !== FORMAT) {
    return { entry: null, next: off, reason: 'corrupt' }
  }
  const dsLen = buf.readUInt8(bodyStart + 1)
  const devLen = buf.readUInt8(bodyStart + 2)
  const prLen = buf.readUInt8(bodyStart + 3)
  let p = bodyStart + FIXED
  if (p + dsLen + devLen + prLen > end) return { entry: null, next: off, reason: 'corrupt' }
  const dataset = buf.toString('latin1', p, p += dsLen)
  const device = buf.toString('latin1', p, p += devLen)
  const principal = buf.toString('latin1', p, p += prLen)
  const entry: JournalEntry = {
    seq: buf.readDoubleLE(bodyStart + 8),
    arrivalUs: buf.readDoubleLE(bodyStart + 16),
    dataset,
    version: buf.readUInt32LE(bodyStart + 4),
    device,
    principal,
    // Copy: the read buffer is reused.
    payload: Buffer.from(buf.subarray(p, end))
  }
  return { entry, next: end }
}

/** Rough heap cost of a cached entry: the entry, its payload Buffer, and its decoded rows. */
function estimate (e: JournalEntry): number {
  return 512 + e.payload.length * 4
}

export class JournalFullError extends StreamgateError {
  constructor (maxBytes: number) {
    super('SG_ERR_JOURNAL_FULL', `journal holds STREAMGATE_JOURNAL_MAX_BYTES=${maxBytes} bytes not yet consumed; retry later`)
  }
}

export class Journal extends EventEmitter {
  private readonly segments: Segment[] = []
  private fd = -1
  private nextSeq: number
  private lastCommitted: number
  private totalBytes = 0
  private pending: JournalRecord[] = []
  private pendingCbs: AppendCallback[] = []
  private pendingBytes = 0
  private scheduled = false
  private inFlight = false
  private failure: Error | null = null
  private closed = false
  private readonly cache: JournalEntry[] = []
  private cacheHead = 0
  private cacheBytes = 0
  private readonly acks = new Map<string, number>()
  private readonly commitNow = (): void => { this.scheduled = false; this.commit() }
  readonly stats = { appended: 0, commits: 0, refusedFull: 0 }

  private constructor (private readonly opts: JournalOptions, recovered: { segments: Segment[], nextSeq: number }) {
    super()
    this.segments = recovered.segments
    this.nextSeq = recovered.nextSeq
    this.lastCommitted = recovered.nextSeq - 1
    for (const s of this.segments) this.totalBytes += s.size
  }

  /** Opens (creating if needed) and recovers the journal in `opts.dir`. */
  static async open (opts: JournalOptions): Promise<{ journal: Journal, recovery: RecoveryReport }> {
    await fsp.mkdir(opts.dir, { recursive: true })
    const names = (await fsp.readdir(opts.dir)).filter((n) => /^\d{16}\.seg$/.test(n)).sort()
    const segments: Segment[] = []
    for (const n of names) {
      const st = await fsp.stat(path.join(opts.dir, n))
      segments.push({ firstSeq: Number(n.slice(0, 16)), file: path.join(opts.dir, n), size: st.size })
    }
    let nextSeq = Math.max(1, (opts.floorSeq ?? 0) + 1)
    let entries = 0
    let truncatedBytes = 0
    let lastSeq = -1
    const last = segments.at(-1)
    if (last !== undefined) {
      // Only the last segment can hold a torn write: earlier ones were complete when the next was created.
      const buf = await fsp.readFile(last.file)
      let off = 0
      let seq = last.firstSeq - 1
      for (;;) {
        const d = decodeAt(buf, off)
        if (d.entry === null) break
        if (d.entry.seq !== seq + 1) break
        seq = d.entry.seq
        off = d.next
        entries++
      }
      if (off < buf.length) {
        truncatedBytes = buf.length - off
        await fsp.truncate(last.file, off)
        opts.log?.warn({ file: last.file, keptBytes: off, droppedBytes: truncatedBytes, lastSeq: seq }, 'journal: dropped a torn or corrupt tail')
        last.size = off
      }
      nextSeq = Math.max(nextSeq, seq + 1)
      lastSeq = seq
    }
    const journal = new Journal(opts, { segments, nextSeq })
    // Appends continue the last segment only when the sequence does; after a gap (consumers are ahead
    // of what is on disk) a new segment starts, so every segment stays a contiguous run.
    if (last === undefined || lastSeq + 1 !== nextSeq) journal.createSegment(nextSeq)
    else journal.fd = fs.openSync(last.file, 'r+')
    const recovery = { segments: journal.segments.length, entries, truncatedBytes, nextSeq }
    opts.log?.info(recovery, 'journal opened')
    return { journal, recovery }
  }

  /** The last sequence number that is durable. */
  get committedSeq (): number { return this.lastCommitted }
  get bytes (): number { return this.totalBytes }
  get healthy (): boolean { return this.failure === null && !this.closed }

  /**
   * Appends a record, taking ownership of the object (it becomes the cached entry; do not reuse it);
   * `cb` fires once it is durable, with an error when it was refused (quota, failed
   * disk, closed). Records appended in the same event-loop turn share one write and one fdatasync.
   */
  append (record: JournalRecord, cb: AppendCallback): void {
    if (this.failure !== null || this.closed) {
      cb(this.failure !== null ? new StreamgateError('SG_ERR_UNAVAILABLE', 'journal has failed: ' + this.failure.message, {}, { cause: this.failure }) : new StreamgateError('SG_ERR_UNAVAILABLE', 'journal is closed'))
      return
    }
    const size = entrySize(record)
    if (this.totalBytes + this.pendingBytes + size > this.opts.maxBytes) {
      this.stats.refusedFull++
      cb(new JournalFullError(this.opts.maxBytes))
      return
    }
    this.pending.push(record)
    this.pendingCbs.push(cb)
    this.pendingBytes += size
    if (!this.scheduled && !this.inFlight) {
      this.scheduled = true
      // Let every publish dispatched in this turn (Aedes handles a socket read's packets together) join the commit.
      setImmediate(this.commitNow)
    }
  }

  private commit (): void {
    if (this.pending.length === 0 || this.inFlight) return
    const batch = this.pending
    const cbs = this.pendingCbs
    const bytes = this.pendingBytes
    this.pending = []
    this.pendingCbs = []
    this.pendingBytes = 0

    const active = this.segments.at(-1)
    if (active !== undefined && active.size > 0 && active.size + bytes > this.opts.segmentBytes) {
      try {
        this.createSegment(this.nextSeq)
      } catch (err) {
        this.failAll(cbs, err as Error, false)
        return
      }
    }
    const seg = this.segments.at(-1) as Segment
    const firstSeq = this.nextSeq
    const buf = Buffer.allocUnsafe(bytes)
    let off = 0
    for (let i = 0; i < batch.length; i++) off = encodeInto(buf, off, firstSeq + i, batch[i] as JournalRecord)
    const start = seg.size
    try {
      let written = 0
      while (written < off) written += fs.writeSync(this.fd, buf, written, off - written, start + written)
    } catch (err) {
      // ENOSPC and friends: roll back the partial write so the file stays a sequence of whole entries.
      try { fs.ftruncateSync(this.fd, start) } catch { /* the next recovery truncates it */ }
      this.failAll(cbs, new StreamgateError('SG_ERR_UNAVAILABLE', 'journal write failed: ' + (err as Error).message, {}, { cause: err }), false)
      return
    }
    seg.size += off
    this.totalBytes += off
    this.nextSeq += batch.length
    this.inFlight = true
    fs.fdatasync(this.fd, (err) => {
      this.inFlight = false
      if (err !== null) {
        // After a failed fsync the page cache state is unknown (the "fsyncgate" lesson): stop accepting.
        this.failAll(cbs, new StreamgateError('SG_ERR_UNAVAILABLE', 'journal fdatasync failed: ' + err.message, {}, { cause: err }), true)
        return
      }
      this.stats.commits++
      this.stats.appended += batch.length
      this.lastCommitted = firstSeq + batch.length - 1
      // The journal owns appended records: each becomes its entry in place (no copy per message).
      for (let i = 0; i < batch.length; i++) {
        const e = batch[i] as JournalRecord & { seq: number }
        e.seq = firstSeq + i
        this.cachePush(e)
      }
      // Listeners may cork sockets so the acknowledgements below leave in one write per client.
      this.emit('acking')
      for (let i = 0; i < cbs.length; i++) (cbs[i] as AppendCallback)(null)
      this.emit('commit', this.lastCommitted)
      if (this.pending.length > 0) this.commit()
    })
  }

  private failAll (cbs: AppendCallback[], err: Error, fatal: boolean): void {
    if (fatal) {
      this.failure = err
      this.opts.log?.warn({ err: err.message }, 'journal failed; refusing appends')
    }
    for (const cb of cbs) cb(err)
    if (fatal) {
      const rest = this.pendingCbs
      this.pending = []
      this.pendingCbs = []
      this.pendingBytes = 0
      for (const cb of rest) cb(err)
    } else if (this.pending.length > 0 && !this.scheduled) {
      this.scheduled = true
      setImmediate(this.commitNow)
    }
  }

  private createSegment (firstSeq: number): void {
    const file = path.join(this.opts.dir, segmentName(firstSeq))
    const fd = fs.openSync(file, 'w+')
    // Make the new file's directory entry durable before anything in it is acknowledged.
    const dirFd = fs.openSync(this.opts.dir, 'r')
    try { fs.fsyncSync(dirFd) } finally { fs.closeSync(dirFd) }
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = fd
    this.segments.push({ firstSeq, file, size: 0 })
  }

  private cachePush (e: JournalEntry): void {
    if (this.opts.cacheBytes <= 0) return
    this.cache.push(e)
    this.cacheBytes += estimate(e)
    while (this.cacheBytes > this.opts.cacheBytes && this.cacheHead < this.cache.length) {
      this.cacheBytes -= estimate(this.cache[this.cacheHead] as JournalEntry)
      this.cache[this.cacheHead++] = undefined as unknown as JournalEntry
    }
    if (this.cacheHead > 4096 && this.cacheHead * 2 > this.cache.length) {
      this.cache.splice(0, this.cacheHead)
      this.cacheHead = 0
    }
  }

  /** Committed entries from `fromSeq` still held in memory, or null when `fromSeq` is older than the cache. */
  fromCache (fromSeq: number, max: number): JournalEntry[] | null {
    if (fromSeq > this.lastCommitted) return []
    const first = this.cache[this.cacheHead]
    if (first === undefined || fromSeq < first.seq) return null
    const start = this.cacheHead + (fromSeq - first.seq)
    return this.cache.slice(start, Math.min(this.cache.length, start + max))
  }

  /** Arrival time (epoch µs) of a committed entry still in memory, else null. */
  arrivalOf (seq: number): number | null {
    const first = this.cache[this.cacheHead]
    if (first === undefined || seq < first.seq || seq > this.lastCommitted) return null
    return this.cache[this.cacheHead + (seq - first.seq)]?.arrivalUs ?? null
  }

  /** A cursor over committed entries from `fromSeq`, served from memory at the tail and from disk behind it. */
  reader (fromSeq: number): JournalReader {
    return new JournalReader(this, fromSeq)
  }

  /** The segments that may hold `seq` onwards (for readers). */
  segmentsFrom (seq: number): readonly Segment[] {
    let i = this.segments.length - 1
    while (i > 0 && (this.segments[i] as Segment).firstSeq > seq) i--
    return this.segments.slice(i)
  }

  /**
   * Records that `consumer` has durably processed everything up to `seq`. Segments every registered
   * consumer has passed are deleted; the active segment is always kept.
   */
  ack (consumer: string, seq: number): void {
    this.acks.set(consumer, seq)
    let min = Infinity
    for (const v of this.acks.values()) min = Math.min(min, v)
    while (this.segments.length > 1) {
      const second = this.segments[1] as Segment
      if (second.firstSeq - 1 > min) break
      const old = this.segments.shift() as Segment
      this.totalBytes -= old.size
      fs.unlink(old.file, (err) => { if (err !== null) this.opts.log?.warn({ file: old.file, err: err.message }, 'journal: could not delete a consumed segment') })
    }
  }

  /** Registers a consumer for retention before its first ack. */
  register (consumer: string, checkpoint: number): void {
    this.acks.set(consumer, checkpoint)
  }

  unregister (consumer: string): void {
    this.acks.delete(consumer)
  }

  /** Waits for the commit in flight and closes the file. Appends after close are refused. Idempotent. */
  async close (): Promise<void> {
    if (this.closed) return
    while (this.inFlight || this.pending.length > 0 || this.scheduled) {
      await new Promise<void>((resolve) => setTimeout(resolve, 1))
      if (this.failure !== null) break
    }
    this.closed = true
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = -1
    this.emit('close')
  }
}

export class JournalReader {
  private handle: fsp.FileHandle | null = null
  private handleFile = ''
  private offset = 0
  private buf = Buffer.allocUnsafe(READ_CHUNK)

  constructor (private readonly journal: Journal, private nextSeq: number) {}

  get position (): number { return this.nextSeq }

  /** Moves the cursor; the next read starts at `seq`. */
  seek (seq: number): void {
    if (seq < this.nextSeq) {
      this.handleFile = ''
      this.offset = 0
    }
    this.nextSeq = seq
  }

  /** Up to `max` committed entries from the current position; [] when there is nothing new. */
  async read (max: number): Promise<JournalEntry[]> {
    const cached = this.journal.fromCache(this.nextSeq, max)
    if (cached !== null) {
      if (cached.length > 0) this.nextSeq = (cached.at(-1) as JournalEntry).seq + 1
      return cached
    }
    return this.readDisk(max)
  }

  private async readDisk (max: number): Promise<JournalEntry[]> {
    const committed = this.journal.committedSeq
    const out: JournalEntry[] = []
    while (out.length < max && this.nextSeq <= committed) {
      // The segment holding nextSeq: once one is read to its end, nextSeq is the next one's first.
      const seg = this.journal.segmentsFrom(this.nextSeq)[0]
      if (seg === undefined) break
      if (this.handleFile !== seg.file) {
        // Opening a segment starts at its beginning; entries before nextSeq are skipped below.
        await this.handle?.close()
        this.handle = await fsp.open(seg.file, 'r')
        this.handleFile = seg.file
        this.offset = 0
      }
      const { bytesRead } = await (this.handle as fsp.FileHandle).read(this.buf, 0, this.buf.length, this.offset)
      if (bytesRead === 0) {
        // The end of this segment: continue at the next one (sequence numbers may jump between them).
        const after = this.journal.segmentsFrom(this.nextSeq).find((x) => x.firstSeq > this.nextSeq)
        if (after === undefined) break
        this.nextSeq = after.firstSeq
        continue
      }
      const view = this.buf.subarray(0, bytesRead)
      let off = 0
      let grow = false
      while (out.length < max) {
        const d = decodeAt(view, off)
        if (d.entry === null) {
          if (d.reason === 'corrupt') throw new StreamgateError('SG_ERR_INTERNAL', `journal segment ${seg.file} is corrupt at offset ${this.offset + off}`)
          // An entry larger than the read buffer: grow it and read again.
          if (off === 0 && view.length >= HEAD && view.readUInt32LE(0) + HEAD > this.buf.length) grow = true
          break
        }
        if (d.entry.seq > committed) break
        off = d.next
        if (d.entry.seq < this.nextSeq) continue
        out.push(d.entry)
        this.nextSeq = d.entry.seq + 1
      }
      this.offset += off
      if (grow) {
        this.buf = Buffer.allocUnsafe(view.readUInt32LE(0) + HEAD)
        continue
      }
      if (off === 0) break
    }
    return out
  }

  async close (): Promise<void> {
    await this.handle?.close()
    this.handle = null
  }
}
