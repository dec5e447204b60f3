// The journal: an append-only segmented log with group commit. An append's callback fires only after
// its bytes are written and fdatasync'd, so "ack means durable" holds for every protocol.
//
// Entry layout (little endian):
//   u32 bodyLen | u32 crc32(body) | body
//   body = u8 format | u8 dsLen | u8 devLen | u8 principalLen | u32 version | f64 seq | f64 arrivalUs
//          | dataset | device | principal (ASCII ids) | [format 2: u8 originLen | origin (UTF-8)] | payload
//   format 1: no origin (MQTT, HTTP); format 2: the message's id at its origin (an AMQP message_id),
//   so a redelivered message is recognised across a restart.
//
// Segments are files named by their first sequence number. Recovery scans the last segment, keeps every
// entry whose length and checksum hold and truncates the rest (a torn tail from a crash mid-write).
import { EventEmitter } from 'node:events'
import fs from 'node:fs'
import fsp from 'node:fs/promises'
import path from 'node:path'
import { crc32 } from 'node:zlib'
import { StreamgateError } from './errors.js'
import { Syncer } from './syncer.js'

export interface JournalRecord {
  /** The message's id where it came from (AMQP message_id), for recognising redeliveries. */
  readonly origin?: string | undefined
  readonly arrivalUs: number
  readonly dataset: string
  readonly version: number
  readonly device: string
  readonly principal: string
  /** The message as received (JSON: one record or an array of them). */
  readonly payload: Buffer
}

export interface JournalEntry extends JournalRecord {
  readonly seq: number
}

export type AppendCallback = (err: Error | null) => void
/** Called once an entry is written to its segment (in the page cache: it survives the process, not yet the machine). */
export type WrittenCallback = () => void

export interface JournalOptions {
  readonly dir: string
  readonly maxBytes: number
  readonly segmentBytes: number
  /**
   * The least time between the starts of two fdatasyncs, in µs (0: each starts as soon as the one
   * before returns). While commits arrive more often than that, they wait for the window to close and
   * share one fdatasync: fewer, larger syncs for a little acknowledgement latency. A commit after a
   * quiet spell is synced at once.
   */
  readonly syncIntervalUs?: number
  /** The sync thread's nice value (gateway/syncer.ts, SyncerOptions); 0 when absent. */
  readonly syncNice?: number
  /**
   * Segments are made ahead, zero-filled to `segmentBytes` and fdatasync'd, and the commits overwrite
   * the zeros: an fdatasync then writes the data and flushes, without committing the file's new size
   * and blocks to ext4's journal each time. A segment's zeros past its entries are cut when it is
   * rolled or closed. Costs up to two segments more of disk (the active one's zeros and the next one),
   * not counted in `maxBytes`.
   */
  readonly preallocate?: boolean
  /** Sequence numbers at or below this were already consumed (e.g. the journal directory was lost). */
  readonly floorSeq?: number
  /**
   * Copies each commit elsewhere before it is acknowledged (a replica that outlives this node's disk):
   * called with the commit's encoded entries once they are fdatasync'd; the appends' callbacks wait
   * for it. When it fails, the commit is rolled back (cut from the segment; its sequence numbers are
   * skipped, never reused: a dataset's sinceSeq may already lie beyond them) and refused to its
   * callers, as a failed write is.
   */
  readonly replicate?: (commit: { readonly firstSeq: number, readonly lastSeq: number, readonly bytes: Buffer }) => Promise<void>
  /**
   * Told which sequence numbers an undo took back (they are never used again), before the next
   * commit is replicated: a commit whose confirm came too late may be in the replica after all.
   */
  readonly onUndo?: (undone: { readonly firstSeq: number, readonly lastSeq: number }) => void
  readonly log?: { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void }
}

export interface RecoveryReport {
  readonly segments: number
  /** Complete entries kept in the last segment. */
  readonly entries: number
  /** Bytes of a torn tail cut off (a write that never finished: nothing in it was acknowledged). */
  readonly truncatedBytes: number
  /** Sequence numbers of entries that failed their checksum between complete ones (lost to corruption), removed. */
  readonly droppedSeqs: readonly number[]
  readonly nextSeq: number
}

/** A segment file: named by the sequence number of its first entry. */
export interface SegmentRef { readonly firstSeq: number, readonly file: string }
interface Segment extends SegmentRef { size: number }

/** What a reader needs of a journal: how far it is durable, and where its segments are. */
export interface JournalSource {
  readonly committedSeq: number
  /** The segments that may hold `seq` onwards, oldest first. */
  segmentsFrom (seq: number): readonly SegmentRef[]
}

const HEAD = 8
const FIXED = 24
const FORMAT = 1
const FORMAT_ORIGIN = 2
/** Longest origin kept (bytes); a longer message id is not used for deduplication. */
export const MAX_ORIGIN = 255
const READ_CHUNK = 1 << 20
/** Marks an error that stops the journal (a failed fdatasync). */
const FATAL = Symbol('streamgate.journal.fatal')
/** The next segment while it is made ahead (JournalOptions.preallocate); not a segment name. */
const PREPARED_NAME = 'next-segment.zeros'
const ZEROS = Buffer.alloc(1 << 20)
/** Bytes from `off` looked at to tell space never written (zeros) from a damaged entry. */
const UNWRITTEN_CHECK = 4096

/** Where the bytes of `buf` after `from` that are not zeros end (`from` when there are none). */
function endOfData (buf: Buffer, from: number): number {
  let end = buf.length
  while (end > from) {
    const at = Math.max(from, end - ZEROS.length)
    if (!zerosIn(buf, at, end)) break
    end = at
  }
  while (end > from && buf[end - 1] === 0) end--
  return end
}

/** `buf` holds only zero bytes from `from` to `to`. */
function zerosIn (buf: Buffer, from: number, to: number): boolean {
  for (let at = from; at < to; at += ZEROS.length) {
    const end = Math.min(to, at + ZEROS.length)
    if (buf.compare(ZEROS, 0, end - at, at, end) !== 0) return false
  }
  return true
}
const SEG_SUFFIX = '.seg'
const SEG_NAME = /^\d{16}\.seg$/

function segmentName (firstSeq: number): string {
  return String(firstSeq).padStart(16, '0') + SEG_SUFFIX
}

/**
 * Writes `bytes` zero bytes to a new `file`, fdatasync'd a MiB at a time: one fdatasync of the whole
 * segment would queue its tens of MB at the disk ahead of the journal's own small fdatasyncs.
 */
async function writeZeros (file: string, bytes: number): Promise<void> {
  const fh = await fsp.open(file, 'w')
  try {
    for (let at = 0; at < bytes; at += ZEROS.length) {
      await fh.write(ZEROS, 0, Math.min(ZEROS.length, bytes - at), at)
      await fh.datasync()
    }
  } finally {
    await fh.close()
  }
}

/** The segment files in `dir`, oldest first. */
export async function listSegments (dir: string): Promise<Segment[]> {
  const names = (await fsp.readdir(dir)).filter((n) => SEG_NAME.test(n)).sort()
  const out: Segment[] = []
  for (const n of names) {
    const st = await fsp.stat(path.join(dir, n)).catch(() => null)
    if (st !== null) out.push({ firstSeq: Number(n.slice(0, 16)), file: path.join(dir, n), size: st.size })
  }
  return out
}

function segmentsFrom (segments: readonly SegmentRef[], seq: number): readonly SegmentRef[] {
  let i = segments.length - 1
  while (i > 0 && (segments[i] as SegmentRef).firstSeq > seq) i--
  return segments.slice(i)
}

function entrySize (r: JournalRecord): number {
  const origin = r.origin === undefined ? 0 : 1 + Buffer.byteLength(r.origin)
  return HEAD + FIXED + r.dataset.length + r.device.length + r.principal.length + origin + r.payload.length
}

// CRC-32 (IEEE) of the few header bytes in JS, so the payload's CRC can continue from it in zlib's
// without slicing a Buffer per entry.
const CRC_TABLE = new Int32Array(256)
for (let n = 0; n < 256; n++) {
  let c = n
  for (let k = 0; k < 8; k++) c = (c & 1) !== 0 ? 0xEDB88320 ^ (c >>> 1) : c >>> 1
  CRC_TABLE[n] = c
}
function crcBytes (buf: Buffer, from: number, to: number): number {
  let c = -1
  for (let i = from; i < to; i++) c = (CRC_TABLE[(c ^ (buf[i] as number)) & 0xff] as number) ^ (c >>> 8)
  return ~c >>> 0
}

/** Ids are ASCII (validated before they reach the journal): one byte a character. */
function writeAscii (buf: Buffer, at: number, s: string): number {
  for (let i = 0; i < s.length; i++) buf[at + i] = s.charCodeAt(i)
  return s.length
}

const f64 = new Float64Array(1)
const f64Bytes = new Uint8Array(f64.buffer)

/** Encodes one entry at `off` (layout in the header comment); returns the offset after it. */
function encodeInto (buf: Buffer, off: number, seq: number, r: JournalRecord): number {
  const b = off + HEAD
  buf[b] = r.origin === undefined ? FORMAT : FORMAT_ORIGIN
  buf[b + 1] = r.dataset.length
  buf[b + 2] = r.device.length
  buf[b + 3] = r.principal.length
  buf.writeUInt32LE(r.version, b + 4)
  f64[0] = seq
  buf.set(f64Bytes, b + 8)
  f64[0] = r.arrivalUs
  buf.set(f64Bytes, b + 16)
  let p = b + FIXED
  p += writeAscii(buf, p, r.dataset)
  p += writeAscii(buf, p, r.device)
  p += writeAscii(buf, p, r.principal)
  if (r.origin !== undefined) {
    const n = buf.write(r.origin, p + 1, 'utf8')
    buf[p] = n
    p += 1 + n
  }
  const headCrc = crcBytes(buf, b, p)
  buf.set(r.payload, p)
  p += r.payload.length
  buf.writeUInt32LE(p - b, off)
  buf.writeUInt32LE(crc32(r.payload, headCrc), off + 4)
  return p
}

type Decoded = { entry: JournalEntry, next: number } | { entry: null, next: number, reason: 'incomplete' | 'corrupt' }

/**
 * After a corrupt entry at `off`: where the next entry starts, if the corrupt one's length still
 * leads to an entry that checks out (one damaged entry, not a torn or garbled tail); else -1.
 */
function resync (buf: Buffer, off: number): number {
  if (off + HEAD > buf.length) return -1
  const len = buf.readUInt32LE(off)
  if (len < FIXED) return -1
  const next = off + HEAD + len
  return next < buf.length && decodeAt(buf, next).entry !== null ? next : -1
}

/** Decodes the entry at `off`; 'incomplete' when the buffer ends first, 'corrupt' on a bad length or checksum. */
function decodeAt (buf: Buffer, off: number): Decoded {
  if (off + HEAD > buf.length) return { entry: null, next: off, reason: 'incomplete' }
  const bodyLen = buf.readUInt32LE(off)
  // Zeros: space never written (the rest of a segment made ahead), where the entries end for now.
  if (bodyLen < FIXED) return { entry: null, next: off, reason: bodyLen === 0 && zerosIn(buf, off, Math.min(buf.length, off + UNWRITTEN_CHECK)) ? 'incomplete' : 'corrupt' }
  const bodyStart = off + HEAD
  const end = bodyStart + bodyLen
  if (end > buf.length) return { entry: null, next: off, reason: 'incomplete' }
  const format = buf.readUInt8(bodyStart)
  if (crc32(buf.subarray(bodyStart, end)) !== buf.readUInt32LE(off + 4) || (format !== FORMAT && format !== FORMAT_ORIGIN)) {
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
  let origin: string | undefined
  if (format === FORMAT_ORIGIN) {
    const n = buf.readUInt8(p)
    if (p + 1 + n > end) return { entry: null, next: off, reason: 'corrupt' }
    origin = buf.toString('utf8', p + 1, p + 1 + n)
    p += 1 + n
  }
  const entry: JournalEntry = {
    origin,
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

/** Every entry of a buffer of whole encoded entries (a replicated commit); throws on a damaged one. */
export function decodeEntries (buf: Buffer): JournalEntry[] {
  const out: JournalEntry[] = []
  let off = 0
  while (off < buf.length) {
    const d = decodeAt(buf, off)
    if (d.entry === null) throw new StreamgateError('SG_ERR_INTERNAL', `damaged journal entry at byte ${off} of ${buf.length} (${d.reason})`)
    out.push(d.entry)
    off = d.next
  }
  return out
}

/** Most commits waiting for the replica at once (the next ones wait in `pending`, joining one commit). */
const REPLICATING = 4
/** Largest replicated commit (one RabbitMQ message; its default limit is 16 MiB in 4.x, 128 MiB in 3.x). */
const REPLICA_COMMIT_BYTES = 4 << 20

/** A commit written to its segment, waiting for its fdatasync. */
interface Written {
  readonly batch: JournalRecord[]
  readonly cbs: AppendCallback[]
  readonly firstSeq: number
  /** Where in the segment its bytes start, and the bytes. */
  readonly start: number
  readonly bytes: Buffer
  readonly seg: Segment
  readonly fd: number
}

/** A durable commit waiting for the replica (STREAMGATE_REPLICATION). */
interface Replicating extends Omit<Written, 'bytes'> {
  /** How many bytes it has in the segment from `start`. */
  readonly bytes: number
  settled: boolean
  error: Error | null
}

/** How many recent commits remember the arrival time of their first entry (for consumers' lag in seconds). */
const ARRIVALS = 4096

export class JournalFullError extends StreamgateError {
  constructor (maxBytes: number) {
    super('SG_ERR_JOURNAL_FULL', `journal holds STREAMGATE_JOURNAL_MAX_BYTES=${maxBytes} bytes not yet consumed; retry later`)
  }
}

/** Calls back one caller of a batch: one that throws must not keep the rest of the batch from theirs. */
function call (cb: (err: Error | null) => void, err: Error | null, log: JournalOptions['log']): void {
  try {
    cb(err)
  } catch (e) {
    log?.warn({ err: (e as Error).message }, 'journal: a callback threw')
  }
}

export class Journal extends EventEmitter {
  private readonly segments: Segment[] = []
  private fd = -1
  /** The active segment was made ahead: zeros follow its entries until it is rolled or closed. */
  private activeMadeAhead = false
  /** The next segment, made ahead and ready (JournalOptions.preallocate), or being made. */
  private prepared: string | null = null
  private preparing: Promise<unknown> | null = null
  private nextSeq: number
  private lastCommitted: number
  private totalBytes = 0
  private pending: JournalRecord[] = []
  private pendingCbs: AppendCallback[] = []
  private pendingWritten: (WrittenCallback | undefined)[] = []
  private pendingBytes = 0
  private scheduled = false
  /** The commits the fdatasync running now covers (none: no fdatasync runs); `unsynced` were written since it started. */
  private syncing: Written[] = []
  private unsynced: Written[] = []
  /** fdatasync off libuv's threadpool, which DuckDB's queries can fill (gateway/syncer.ts). */
  private readonly syncer: Syncer
  /** Commits written and fdatasync'd, waiting for the replica (STREAMGATE_REPLICATION), oldest first. */
  private readonly replicating: Replicating[] = []
  private undoing = false
  private failure: Error | null = null
  private closed = false
  /** Per recent commit: its last sequence number and the arrival time of its first entry (ring buffers). */
  private readonly arrivalSeq = new Float64Array(ARRIVALS)
  private readonly arrivalUs = new Float64Array(ARRIVALS)
  private arrivalCount = 0
  private readonly acks = new Map<string, number>()
  private readonly commitNow = (): void => { this.scheduled = false; this.commit() }
  /** When the last fdatasync started (performance.now()), and the timer of one waiting for syncIntervalUs. */
  private lastSyncStart = -Infinity
  private syncTimer: NodeJS.Timeout | null = null
  /** opts.syncIntervalUs in the unit of performance.now(). */
  private readonly syncIntervalMs: number
  private readonly syncDue = (): void => {
    this.syncTimer = null
    // Timers count whole milliseconds and may fire a little early: syncSoon arms again if so.
    if (!this.inFlight && this.unsynced.length > 0) this.syncSoon()
  }
  /** `commits`: fdatasyncs, each covering the writes made since the previous one started. */
  readonly stats = { appended: 0, commits: 0, refusedFull: 0 }
  /**
   * The latest arrival time (epoch µs) among the entries of the last segment found at open (0: none):
   * arrival times go on from it, even when the wall clock is behind it after a restart.
   */
  lastArrivalUs = 0
  /** What the last open found and repaired (GET /v1/status shows it). */
  recovery: RecoveryReport = { segments: 0, entries: 0, truncatedBytes: 0, droppedSeqs: [], nextSeq: 1 }

  private constructor (private readonly opts: JournalOptions, recovered: { segments: Segment[], nextSeq: number }) {
    super()
    this.syncIntervalMs = (opts.syncIntervalUs ?? 0) / 1000
    this.syncer = new Syncer({ nice: opts.syncNice ?? 0 })
    this.segments = recovered.segments
    this.nextSeq = recovered.nextSeq
    this.lastCommitted = recovered.nextSeq - 1
    for (const s of this.segments) this.totalBytes += s.size
  }

  /** Opens (creating if needed) and recovers the journal in `opts.dir`. */
  static async open (opts: JournalOptions): Promise<{ journal: Journal, recovery: RecoveryReport }> {
    // A NaN or infinite window would arm a timer every millisecond and never sync.
    const iv = opts.syncIntervalUs ?? 0
    if (!Number.isFinite(iv) || iv < 0) throw new RangeError(`journal: syncIntervalUs must be a finite number of µs, 0 or more (got ${iv})`)
    await fsp.mkdir(opts.dir, { recursive: true })
    const segments = await listSegments(opts.dir)
    let nextSeq = Math.max(1, (opts.floorSeq ?? 0) + 1)
    let entries = 0
    let truncatedBytes = 0
    const droppedSeqs: number[] = []
    let lastSeq = -1
    let lastArrivalUs = 0
    const last = segments.at(-1)
    if (last !== undefined) {
      // Only the last segment can hold a torn write: earlier ones were complete when the next was created.
      const buf = await fsp.readFile(last.file)
      let off = 0
      let seq = last.firstSeq - 1
      const keep: [number, number][] = [] // byte ranges of complete entries
      for (;;) {
        const d = decodeAt(buf, off)
        if (d.entry !== null && d.entry.seq > seq) {
          keep.push([off, d.next])
          if (d.entry.arrivalUs > lastArrivalUs) lastArrivalUs = d.entry.arrivalUs
          // A jump means entries between were damaged and skipped below.
          seq = d.entry.seq
          off = d.next
          entries++
          continue
        }
        // A damaged entry with complete ones after it: drop it alone. Anything else ends the segment.
        const after = d.entry === null && d.reason === 'corrupt' ? resync(buf, off) : -1
        if (after < 0) break
        const nextGood = decodeAt(buf, after).entry!.seq
        for (let s = seq + 1; s < nextGood; s++) droppedSeqs.push(s)
        off = after
      }
      // Zeros after the entries are the rest of a segment made ahead, not a torn write: cut them too
      // (a segment other than the one being written never holds zeros), but they were never data.
      // (A short run of zeros at the very end is part of the torn write; a long one is made-ahead space.)
      const dataEnd = endOfData(buf, off)
      truncatedBytes = (buf.length - dataEnd >= UNWRITTEN_CHECK ? dataEnd : buf.length) - off
      if (droppedSeqs.length > 0) {
        // Rewrite the segment with the complete entries only, then put it in place (fsync'd).
        const tmp = last.file + '.recover'
        const out = Buffer.concat(keep.map(([a, b]) => buf.subarray(a, b)))
        await fsp.writeFile(tmp, out)
        const fh = await fsp.open(tmp, 'r+')
        await fh.datasync()
        await fh.close()
        await fsp.rename(tmp, last.file)
        last.size = out.length
        opts.log?.warn({ file: last.file, droppedSeqs, truncatedBytes }, 'journal: entries failed their checksum and were removed; the complete ones after them are kept')
      } else if (off < buf.length) {
        // Durably: a segment followed by another must not come back with its zeros after a crash.
        const fh = await fsp.open(last.file, 'r+')
        try {
          await fh.truncate(off)
          await fh.datasync()
        } finally {
          await fh.close()
        }
        last.size = off
      }
      if (truncatedBytes > 0) opts.log?.warn({ file: last.file, droppedBytes: truncatedBytes, lastSeq: seq }, 'journal: dropped a torn tail (a write that never completed)')
      nextSeq = Math.max(nextSeq, seq + 1)
      lastSeq = seq
    }
    const journal = new Journal(opts, { segments, nextSeq })
    journal.lastArrivalUs = lastArrivalUs
    journal.recovery = { segments: segments.length, entries, truncatedBytes, droppedSeqs, nextSeq }
    // Appends continue the last segment only when the sequence does; after a gap (consumers are ahead
    // of what is on disk) a new segment starts, so every segment stays a contiguous run.
    // A next segment left half made by the last run is made again.
    await fsp.rm(path.join(opts.dir, PREPARED_NAME), { force: true })
    if (last === undefined || lastSeq + 1 !== nextSeq) {
      // A new segment starts made ahead too (a new journal's first one included).
      journal.prepareSegment()
      await journal.preparing
      journal.createSegment(nextSeq)
    } else {
      journal.fd = fs.openSync(last.file, 'r+')
      journal.prepareSegment()
    }
    const recovery = { segments: journal.segments.length, entries, truncatedBytes, droppedSeqs, nextSeq }
    opts.log?.info(recovery, 'journal opened')
    return { journal, recovery }
  }

  /** An fdatasync is running (sync() is only called with commits to cover). */
  private get inFlight (): boolean { return this.syncing.length > 0 }

  /** The last sequence number that is durable. */
  get committedSeq (): number { return this.lastCommitted }
  /** The sequence number the last append made so far will have (committed or not): later appends get higher ones. */
  get queuedSeq (): number { return this.nextSeq - 1 + this.pending.length }
  get bytes (): number { return this.totalBytes }
  get healthy (): boolean { return this.failure === null && !this.closed }

  /**
   * Appends a record; `cb` fires once it is durable, with an error when it was refused (quota, failed
   * disk, closed). Records appended in the same event-loop turn share one write and one fdatasync.
   * `written`, if given, fires when the record's write has returned, while its fdatasync runs: never
   * when the write fails, and before `cb` (which may still fail, if the fdatasync does).
   */
  append (record: JournalRecord, cb: AppendCallback, written?: WrittenCallback): void {
    if (this.failure !== null || this.closed) {
      cb(this.failure !== null ? new StreamgateError('SG_ERR_UNAVAILABLE', 'journal has failed: ' + this.failure.message, {}, { cause: this.failure }) : new StreamgateError('SG_ERR_UNAVAILABLE', 'journal is closed'))
      return
    }
    if (record.origin !== undefined && Buffer.byteLength(record.origin) > MAX_ORIGIN) {
      cb(new StreamgateError('SG_ERR_BAD_REQUEST', `an origin id is at most ${MAX_ORIGIN} bytes`))
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
    this.pendingWritten.push(written)
    this.pendingBytes += size
    if (!this.scheduled) {
      this.scheduled = true
      // Let every publish dispatched in this turn (Aedes handles a socket read's packets together) join the commit.
      setImmediate(this.commitNow)
    }
  }

  /**
   * Writes what is pending as one commit, at once, even while the fdatasync of earlier ones runs:
   * the live fan-out waits for the write only, never for someone else's fdatasync. One fdatasync is
   * in flight at a time and covers every commit written before it started (group commit).
   */
  private commit (): void {
    if (this.pending.length === 0 || this.undoing) return
    // Replicated commits written and not yet confirmed: at most REPLICATING of them, none while one
    // failed (it and every later one are being undone), and within one segment (an undo cuts one file).
    if (this.opts.replicate !== undefined && this.replicating.length + this.unsynced.length + this.syncing.length >= REPLICATING) return
    // A replicated commit is one message: keep it well below RabbitMQ's message size limit.
    let take = this.pending.length
    let bytes = this.pendingBytes
    if (this.opts.replicate !== undefined && bytes > REPLICA_COMMIT_BYTES) {
      bytes = 0
      take = 0
      while (take < this.pending.length && (take === 0 || bytes + entrySize(this.pending[take]!) <= REPLICA_COMMIT_BYTES)) bytes += entrySize(this.pending[take++]!)
    }
    const active = this.segments.at(-1)
    const newSegment = active !== undefined && active.size > 0 && active.size + bytes > this.opts.segmentBytes
    // The fdatasync covers one file: a new segment waits until the old one's commits are durable
    // (and confirmed); taken up again then.
    if (newSegment && (this.inFlight || this.unsynced.length > 0 || this.replicating.length > 0)) return
    const all = take === this.pending.length
    const batch = all ? this.pending : this.pending.slice(0, take)
    const cbs = all ? this.pendingCbs : this.pendingCbs.slice(0, take)
    const written = all ? this.pendingWritten : this.pendingWritten.slice(0, take)
    this.pending = all ? [] : this.pending.slice(take)
    this.pendingCbs = all ? [] : this.pendingCbs.slice(take)
    this.pendingWritten = all ? [] : this.pendingWritten.slice(take)
    this.pendingBytes -= bytes
    if (newSegment) {
      try {
        this.createSegment(this.nextSeq)
      } catch (err) {
        this.failAll(cbs, err as Error, (err as Record<symbol, unknown>)[FATAL] === true)
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
      let n = 0
      while (n < off) n += fs.writeSync(this.fd, buf, n, off - n, start + n)
    } catch (err) {
      // ENOSPC and friends: roll back the partial write so the file stays a sequence of whole entries.
      try { fs.ftruncateSync(this.fd, start) } catch { /* the next recovery truncates it */ }
      this.failAll(cbs, new StreamgateError('SG_ERR_UNAVAILABLE', 'journal write failed: ' + (err as Error).message, {}, { cause: err }), false)
      return
    }
    seg.size += off
    this.totalBytes += off
    this.nextSeq += batch.length
    this.unsynced.push({ batch, cbs, firstSeq, start, bytes: buf.subarray(0, off), seg, fd: this.fd })
    if (!this.inFlight) this.syncSoon()
    // Written: let the live fan-out go while the fdatasync runs on its thread. One that throws must
    // not keep the rest of the batch from theirs (nor leave this commit half done).
    for (let i = 0; i < written.length; i++) {
      const w = written[i]
      if (w !== undefined) call(w, null, this.opts.log)
    }
  }

  /**
   * Starts the fdatasync of what is written now, or once `syncIntervalUs` has passed since the last
   * one started: a commit written meanwhile (every event-loop turn, under load) checks again, and a
   * timer covers the last commit of a burst.
   */
  private syncSoon (): void {
    const wait = this.lastSyncStart + this.syncIntervalMs - performance.now()
    if (wait <= 0) {
      this.sync()
    } else if (this.syncTimer === null) {
      this.syncTimer = setTimeout(this.syncDue, Math.ceil(wait))
    }
  }

  /** One fdatasync for every commit written since the last one started; then they are durable. */
  private sync (): void {
    if (this.syncTimer !== null) {
      clearTimeout(this.syncTimer)
      this.syncTimer = null
    }
    this.lastSyncStart = performance.now()
    const commits = this.unsynced
    this.unsynced = []
    this.syncing = commits
    this.syncer.fdatasync(this.fd, (err) => {
      this.syncing = []
      if (err !== null) {
        // After a failed fsync the page cache state is unknown (the "fsyncgate" lesson): stop accepting,
        // and refuse every commit written and not acknowledged (all were written before this returned).
        const waiting = [...this.replicating.splice(0), ...commits, ...this.unsynced.splice(0)].flatMap((w) => w.cbs)
        this.undoing = false
        this.failAll(waiting, new StreamgateError('SG_ERR_UNAVAILABLE', 'journal fdatasync failed: ' + err.message, {}, { cause: err }), true)
        return
      }
      this.stats.commits++
      if (this.opts.replicate === undefined) {
        this.committed(commits)
      } else {
        // Every commit of the group joins `replicating` before any is sent or undone: an undo that
        // waited for this fdatasync must cut them all.
        const waits = commits.map((c): Replicating => ({ ...c, bytes: c.bytes.length, settled: false, error: null }))
        this.replicating.push(...waits)
        for (let i = 0; i < waits.length; i++) this.replicate(waits[i]!, commits[i]!.bytes)
        if (this.undoing) this.drainReplicated()
      }
      if (this.unsynced.length > 0) this.syncSoon()
      if (this.pending.length > 0 && !this.scheduled) this.commit()
    })
  }

  /**
   * A durable commit goes to the replica. Nothing is acknowledged, and no consumer reads it
   * (committedSeq stays), until the replica has it; commits are confirmed in order.
   */
  private replicate (wait: Replicating, bytes: Buffer): void {
    if (this.undoing) {
      // Written while an earlier commit failed: undone with it.
      wait.settled = true
      wait.error = new Error('an earlier commit was not replicated')
      return
    }
    this.opts.replicate!({ firstSeq: wait.firstSeq, lastSeq: wait.firstSeq + wait.batch.length - 1, bytes }).then(
      () => { wait.settled = true; this.drainReplicated() },
      (rerr: Error) => { wait.settled = true; wait.error = rerr; this.drainReplicated() })
  }

  /**
   * Acknowledges replicated commits in order. When one failed, it and every later one (written after
   * it, maybe already confirmed) are undone once all have settled: cut from the segment, their
   * sequence numbers skipped (never reused), refused to their callers.
   */
  private drainReplicated (): void {
    let n = 0
    while (n < this.replicating.length && this.replicating[n]!.settled) {
      if (this.replicating[n]!.error !== null) { this.undoing = true; break }
      n++
    }
    if (n > 0) this.committed(this.replicating.splice(0, n))
    if (this.replicating.length > 0 && !this.undoing) return
    if (this.undoing) {
      // Commits written and not yet durable join the undo when their fdatasync returns.
      if (this.inFlight || this.unsynced.length > 0 || this.replicating.some((w) => !w.settled)) return
      const undone = this.replicating.splice(0)
      const first = undone[0]!
      const err = new StreamgateError('SG_ERR_UNAVAILABLE', 'journal replication failed: ' + first.error!.message, { retryAfter: 5 }, { cause: first.error })
      const bytes = undone.reduce((n, w) => n + w.bytes, 0)
      const cbs = undone.flatMap((w) => w.cbs)
      this.undoing = false
      if (this.fd === first.fd && first.seg === this.segments.at(-1)) {
        try {
          fs.ftruncateSync(first.fd, first.start)
          fs.fdatasyncSync(first.fd)
          first.seg.size -= bytes
          this.totalBytes -= bytes
          // The undone sequence numbers are skipped, not reused (a dataset created meanwhile starts
          // after them): the next commit goes to a new segment named after the next number, so the
          // jump survives a restart.
          this.opts.onUndo?.({ firstSeq: first.firstSeq, lastSeq: this.nextSeq - 1 })
          this.createSegment(this.nextSeq)
        } catch (terr) {
          this.failAll(cbs, new StreamgateError('SG_ERR_UNAVAILABLE', 'journal rollback failed: ' + (terr as Error).message, {}, { cause: terr }), true)
          return
        }
      } else {
        // Never expected (commits wait while one is undone, and stay in one segment): stop rather than guess.
        this.failAll(cbs, new StreamgateError('SG_ERR_UNAVAILABLE', 'journal rollback impossible: ' + err.message), true)
        return
      }
      this.failAll(cbs, err, false)
    }
    if (this.pending.length > 0) this.commit()
  }

  /**
   * Commits are durable (and replicated, when configured), in order: acknowledge them and let
   * consumers read them (one 'commit' event for all).
   */
  private committed (commits: readonly Pick<Written, 'batch' | 'cbs' | 'firstSeq'>[]): void {
    for (const c of commits) {
      this.lastCommitted = c.firstSeq + c.batch.length - 1
      this.stats.appended += c.batch.length
      const slot = this.arrivalCount++ % ARRIVALS
      this.arrivalSeq[slot] = this.lastCommitted
      this.arrivalUs[slot] = (c.batch[0] as JournalRecord).arrivalUs
      for (let i = 0; i < c.cbs.length; i++) call(c.cbs[i]!, null, this.opts.log)
    }
    this.emit('commit', this.lastCommitted)
  }

  private failAll (cbs: AppendCallback[], err: Error, fatal: boolean): void {
    if (fatal) {
      this.failure = err
      this.opts.log?.warn({ err: err.message }, 'journal failed; refusing appends')
    }
    for (const cb of cbs) call(cb, err, this.opts.log)
    if (fatal) {
      const rest = this.pendingCbs
      this.pending = []
      this.pendingCbs = []
      this.pendingWritten = []
      this.pendingBytes = 0
      for (const cb of rest) call(cb, err, this.opts.log)
    } else if (this.pending.length > 0 && !this.scheduled) {
      this.scheduled = true
      setImmediate(this.commitNow)
    }
  }

  private createSegment (firstSeq: number): void {
    const file = path.join(this.opts.dir, segmentName(firstSeq))
    // The zeros past the entries of a segment made ahead go, durably, before the next segment exists:
    // readers take a segment followed by another as complete, and stop at zeros.
    const active = this.segments.at(-1)
    if (this.activeMadeAhead && this.fd >= 0 && active !== undefined) {
      fs.ftruncateSync(this.fd, active.size)
      // A failed fdatasync leaves the page cache's state unknown (see sync()): the journal stops.
      try { fs.fdatasyncSync(this.fd) } catch (err) { throw Object.assign(err as Error, { [FATAL]: true }) }
    }
    const prepared = this.prepared
    this.prepared = null
    let fd: number
    if (prepared !== null) {
      fs.renameSync(prepared, file)
      fd = fs.openSync(file, 'r+')
    } else {
      fd = fs.openSync(file, 'w+')
    }
    // Make the new file's directory entry durable before anything in it is acknowledged.
    const dirFd = fs.openSync(this.opts.dir, 'r')
    try { fs.fsyncSync(dirFd) } finally { fs.closeSync(dirFd) }
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = fd
    this.activeMadeAhead = prepared !== null
    this.segments.push({ firstSeq, file, size: 0 })
    this.prepareSegment()
  }

  /**
   * Makes the next segment ahead, in the background (libuv's pool): a file of `segmentBytes` zeros,
   * fdatasync'd, renamed into place at the next roll (JournalOptions.preallocate). Until it is ready a
   * roll creates an empty file, as without the option.
   */
  private prepareSegment (): void {
    if (this.opts.preallocate !== true || this.prepared !== null || this.preparing !== null || this.closed) return
    const file = path.join(this.opts.dir, PREPARED_NAME)
    this.preparing = writeZeros(file, this.opts.segmentBytes).then(() => {
      this.preparing = null
      if (this.closed) return fsp.rm(file, { force: true })
      this.prepared = file
    }, (err: Error) => {
      this.preparing = null
      // A half-made file would hold disk space the journal may need (a full disk is the likely cause).
      fs.rm(file, { force: true }, () => {})
      this.opts.log?.warn({ err: err.message }, 'journal: could not make the next segment ahead; it grows as it is written')
    })
  }

  /**
   * Arrival time (epoch µs) of the first entry of the commit holding `seq` (so at most a commit's
   * duration early), while that commit is among the last ${ARRIVALS}; else null.
   */
  arrivalOf (seq: number): number | null {
    if (seq > this.lastCommitted) return null
    const n = Math.min(this.arrivalCount, ARRIVALS)
    // Newest first: the oldest remembered commit whose last sequence number is >= seq.
    let found: number | null = null
    for (let k = 1; k <= n; k++) {
      const slot = (this.arrivalCount - k) % ARRIVALS
      if ((this.arrivalSeq[slot] as number) < seq) break
      found = this.arrivalUs[slot] as number
    }
    return found
  }

  /** A cursor over committed entries from `fromSeq`, read from the segments (the page cache keeps the tail). */
  reader (fromSeq: number): JournalReader {
    return new JournalReader(this, fromSeq)
  }

  /**
   * The origins (and principals) of the entries in the last `segments` segments, oldest first: what
   * a bridge needs to recognise messages redelivered after a restart.
   */
  async recentOrigins (segments = 2): Promise<{ principal: string, origin: string }[]> {
    const out: { principal: string, origin: string }[] = []
    for (const seg of this.segments.slice(-segments)) {
      const buf = await fsp.readFile(seg.file).catch(() => Buffer.alloc(0))
      let off = 0
      for (;;) {
        const d = decodeAt(buf, off)
        if (d.entry === null) {
          const after = d.reason === 'corrupt' ? resync(buf, off) : -1
          if (after < 0) break
          off = after
          continue
        }
        if (d.entry.origin !== undefined) out.push({ principal: d.entry.principal, origin: d.entry.origin })
        off = d.next
      }
    }
    return out
  }

  /** The segments that may hold `seq` onwards (for readers). */
  segmentsFrom (seq: number): readonly SegmentRef[] {
    return segmentsFrom(this.segments, seq)
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

  /** Resolves true once every entry up to `seq` is committed, false after `timeoutMs` or when the journal failed. */
  whenCommitted (seq: number, timeoutMs: number): Promise<boolean> {
    if (this.lastCommitted >= seq) return Promise.resolve(true)
    if (this.failure !== null) return Promise.resolve(false)
    return new Promise((resolve) => {
      const done = (ok: boolean): void => {
        clearTimeout(timer)
        this.off('commit', onCommit)
        resolve(ok)
      }
      const onCommit = (committed: number): void => { if (committed >= seq) done(true) }
      const timer = setTimeout(() => done(false), timeoutMs)
      this.on('commit', onCommit)
    })
  }

  /** Waits for the commit in flight and closes the file. Appends after close are refused. Idempotent. */
  async close (): Promise<void> {
    if (this.closed) return
    while (this.inFlight || this.unsynced.length > 0 || this.pending.length > 0 || this.scheduled || this.replicating.length > 0) {
      await new Promise<void>((resolve) => setTimeout(resolve, 1))
      if (this.failure !== null) break
    }
    this.closed = true
    await this.syncer.close()
    await this.preparing
    if (this.prepared !== null) await fsp.rm(this.prepared, { force: true })
    this.prepared = null
    const active = this.segments.at(-1)
    if (this.fd >= 0 && this.activeMadeAhead && active !== undefined) {
      // What recovery would cut anyway; a clean close leaves the segment as its entries.
      try { fs.ftruncateSync(this.fd, active.size) } catch (err) { this.opts.log?.warn({ err: (err as Error).message }, 'journal: could not cut the zeros after the last segment\'s entries') }
    }
    if (this.fd >= 0) fs.closeSync(this.fd)
    this.fd = -1
    this.emit('close')
  }
}

/**
 * A read-only view of a journal written by another thread (the sink thread follows the gateway's
 * journal this way): the committed sequence number comes from the writer, the segments from the
 * directory, listed again when a reader needs one it has not seen.
 */
export class JournalFollower implements JournalSource {
  private segments: SegmentRef[] = []
  committedSeq = 0

  constructor (private readonly dir: string) {}

  async refresh (): Promise<void> {
    this.segments = await listSegments(this.dir)
  }

  segmentsFrom (seq: number): readonly SegmentRef[] {
    return segmentsFrom(this.segments, seq)
  }
}

/** Most payload bytes one read returns (besides one entry that alone is larger). */
const READ_MAX_BYTES = 32 << 20

export class JournalReader {
  private handle: fsp.FileHandle | null = null
  private handleFile = ''
  private offset = 0
  private buf = Buffer.allocUnsafe(READ_CHUNK)
  /**
   * Where each entry of the last read starts in the open segment (its byte offset), so seek() back into
   * it is cheap. Only the open segment's: seek() reopens any other from its start anyway.
   */
  private lastSeqs: number[] = []
  private lastOffsets: number[] = []
  /** Damaged entries stepped over (bit rot in a segment written long ago). */
  corrupt = 0

  constructor (private readonly source: JournalSource & { refresh?: () => Promise<void> }, private nextSeq: number) {}

  get position (): number { return this.nextSeq }

  /**
   * Moves the cursor; the next read starts at `seq`. Back into the last read's entries (a consumer
   * that used part of a read) it resumes at that entry's byte offset; anywhere else earlier it rereads
   * the segment from its start.
   */
  seek (seq: number): void {
    if (seq < this.nextSeq) {
      const i = this.lastSeqs.indexOf(seq)
      if (i >= 0) {
        this.offset = this.lastOffsets[i]!
      } else {
        this.handleFile = ''
        this.offset = 0
      }
    }
    this.nextSeq = seq
  }

  /**
   * Up to `max` committed entries (and about READ_MAX_BYTES of payload) from the current position; []
   * when there is nothing new. A read that fails after it took entries returns them (its position is
   * past them), and the next read fails where this one stopped.
   */
  async read (max: number): Promise<JournalEntry[]> {
    const out: JournalEntry[] = []
    try {
      await this.readInto(out, max)
    } catch (err) {
      if (out.length === 0) throw err
    }
    return out
  }

  private async readInto (out: JournalEntry[], max: number): Promise<void> {
    const committed = this.source.committedSeq
    this.lastSeqs = []
    this.lastOffsets = []
    let bytes = 0
    let refreshed = false
    while (out.length < max && bytes < READ_MAX_BYTES && this.nextSeq <= committed) {
      // The segment holding nextSeq: once one is read to its end, nextSeq is the next one's first.
      let seg = this.source.segmentsFrom(this.nextSeq)[0]
      if ((seg === undefined || seg.firstSeq > this.nextSeq) && !refreshed && this.source.refresh !== undefined) {
        refreshed = true
        await this.source.refresh()
        seg = this.source.segmentsFrom(this.nextSeq)[0]
      }
      if (seg === undefined) break
      if (this.handleFile !== seg.file) {
        // Opening a segment starts at its beginning; entries before nextSeq are skipped below.
        await this.handle?.close()
        this.handle = null
        this.handleFile = ''
        this.lastSeqs = []
        this.lastOffsets = []
        try {
          this.handle = await fsp.open(seg.file, 'r')
        } catch (err) {
          // A followed journal's listing can name a segment deleted since: list again.
          if ((err as NodeJS.ErrnoException).code !== 'ENOENT' || refreshed || this.source.refresh === undefined) throw err
          refreshed = true
          await this.source.refresh()
          continue
        }
        this.handleFile = seg.file
        this.offset = 0
      }
      const { bytesRead } = await (this.handle as fsp.FileHandle).read(this.buf, 0, this.buf.length, this.offset)
      if (bytesRead === 0) {
        // A followed journal's listing may be stale: the segment holding nextSeq may be a newer one.
        if (!refreshed && this.source.refresh !== undefined) {
          refreshed = true
          await this.source.refresh()
          if (this.source.segmentsFrom(this.nextSeq)[0]?.file !== seg.file) continue
        }
        // The end of the segment holding nextSeq: continue at the next one (sequence numbers may jump
        // between segments after a lost journal directory).
        const after = this.source.segmentsFrom(this.nextSeq).find((x) => x.firstSeq > this.nextSeq)
        if (after === undefined) break
        this.nextSeq = after.firstSeq
        continue
      }
      const view = this.buf.subarray(0, bytesRead)
      let off = 0
      let grow = false
      // Past the committed point an entry may be half written (in a segment made ahead, zeros
      // then the writer's bytes, with no file size to hide them): never look there.
      while (out.length < max && bytes < READ_MAX_BYTES && this.nextSeq <= committed) {
        // Entries before nextSeq (the start of a segment, after a seek) are stepped over unread.
        if (off + HEAD + FIXED <= view.length) {
          const len = view.readUInt32LE(off)
          if (len >= FIXED && off + HEAD + len <= view.length && view.readDoubleLE(off + HEAD + 8) < this.nextSeq) {
            off += HEAD + len
            continue
          }
        }
        const d = decodeAt(view, off)
        if (d.entry === null) {
          if (d.reason === 'corrupt') {
            // One damaged entry (its length leads to a sound one): step over it and count it.
            const after = resync(view, off)
            if (after >= 0) {
              this.corrupt++
              off = after
              continue
            }
            throw new StreamgateError('SG_ERR_INTERNAL', `journal segment ${seg.file} is corrupt at offset ${this.offset + off}`)
          }
          // An entry larger than the read buffer: grow it and read again.
          if (off === 0 && view.length >= HEAD && view.readUInt32LE(0) + HEAD > this.buf.length) grow = true
          break
        }
        if (d.entry.seq > committed) break
        this.lastSeqs.push(d.entry.seq)
        this.lastOffsets.push(this.offset + off)
        off = d.next
        out.push(d.entry)
        bytes += d.entry.payload.length
        this.nextSeq = d.entry.seq + 1
      }
      this.offset += off
      if (grow) {
        this.buf = Buffer.allocUnsafe(view.readUInt32LE(0) + HEAD)
        continue
      }
      if (off === 0) break
    }
  }

  async close (): Promise<void> {
    await this.handle?.close()
    this.handle = null
  }
}
