// A journal consumer: reads committed entries in order and hands them to a sink, which stores them
// and advances its checkpoint atomically. Failures are retried with capped backoff; the journal holds
// the data meanwhile, so ingestion never waits for a sink. While a batch is written the next one is
// read and decoded (writes stay one at a time, in order).
import { EventEmitter } from 'node:events'
import type { Catalog, Row } from './datasets.js'
import type { JournalEntry, JournalReader, JournalSource } from './journal.js'
import type { ConsumerStatus, JournalConsumer, OriginClaims, Sink, SinkEntry } from './ports.js'

/** The journal as a consumer sees it: the gateway's own, or one followed from another thread. */
export interface ConsumerJournal extends JournalSource {
  reader (fromSeq: number): JournalReader
  on (event: 'commit', listener: () => void): unknown
  off (event: 'commit', listener: () => void): unknown
  /** Retention: segments are kept until every registered consumer has acknowledged them. */
  register (consumer: string, checkpoint: number): void
  ack (consumer: string, seq: number): void
  unregister (consumer: string): void
  arrivalOf? (seq: number): number | null
}

export interface ConsumerOptions {
  /** Most entries read per batch. */
  readonly maxEntries: number
  /** Stop adding entries to a batch once it holds this many rows. */
  readonly maxRows: number
  /**
   * After writing a batch smaller than a quarter of maxRows that took everything there was, wait this
   * long before the next one, so that stores pay their per-transaction cost (DuckDB: a commit and its
   * WAL fsync) over more rows. A batch cut short by maxEntries or maxRows (a backlog) is followed at once.
   */
  readonly lingerMs?: number
  readonly retryMinMs?: number
  readonly retryMaxMs?: number
  readonly log?: { warn: (obj: object, msg: string) => void }
  /** Several nodes: entries carrying a message id are stored only by the copy holding its claim. */
  readonly claims?: { readonly store: OriginClaims, readonly nodeId: string }
}

const NO_ROWS: Row[] = []

/** Sink entries and the journal position they reach (entries skipped included). */
interface Batch { entries: SinkEntry[], readonly lastSeq: number, readonly rows: number, readonly skipped: number }

/** A batch as read ahead, with what it was decoded from and under which catalog (Catalog.changes). */
interface Fetched {
  /** The journal entries the batch covers, up to its lastSeq. */
  readonly read: readonly JournalEntry[]
  readonly batch: Batch
  readonly changes: number
  /** It ends before what was committed when it was read: more is waiting. */
  readonly cut: boolean
}

export class SinkConsumer extends EventEmitter implements JournalConsumer {
  private reader: JournalReader | null = null
  private position = 0
  private running: Promise<void> | null = null
  private closed = false
  private wake: (() => void) | null = null
  private onClose: (() => void) | null = null
  private readonly onCommit = (): void => { this.wake?.() }
  private gate: { readonly promise: Promise<void>, readonly open: () => void } | null = null
  private parked: (() => void) | null = null
  /** Until the first read after start(): whether it begins where the checkpoint said. */
  private resuming = false
  lastError: string | null = null
  failures = 0
  skipped = 0
  /** Entries not stored because another node's copy of the same message (same id) holds its claim. */
  duplicates = 0

  constructor (private readonly journal: ConsumerJournal, readonly sink: Sink, private readonly catalog: Catalog, private readonly opts: ConsumerOptions) {
    super()
  }

  get name (): string { return this.sink.name }
  /** Last sequence number stored by the sink. */
  get checkpoint (): number { return this.position }
  get lag (): number { return Math.max(0, this.journal.committedSeq - this.position) }
  /** Age of the oldest entry not yet stored, in seconds (null when none, or when it is no longer in memory). */
  get lagSeconds (): number | null {
    if (this.lag === 0) return 0
    const at = this.journal.arrivalOf?.(this.position + 1) ?? null
    return at === null ? null : Math.max(0, (Date.now() * 1000 - at) / 1e6)
  }

  status (): ConsumerStatus {
    return {
      name: this.name, checkpoint: this.position, lag: this.lag, lagSeconds: this.lagSeconds,
      lastError: this.lastError, failures: this.failures, skipped: this.skipped + (this.reader?.corrupt ?? 0), breaker: this.sink.breaker?.() ?? null
    }
  }

  async start (): Promise<void> {
    this.resuming = true
    this.position = await this.sink.checkpoint()
    this.journal.register(this.name, this.position)
    this.reader = this.journal.reader(this.position + 1)
    this.running = this.loop()
  }

  private async loop (): Promise<void> {
    const reader = this.reader as JournalReader
    let delay = this.opts.retryMinMs ?? 100
    // The next batch, read and decoded while the one before it is written: a store's write ends with a
    // commit that waits on I/O (DuckDB's WAL fsync, QuestDB's HTTP answer), during which this thread
    // would otherwise idle (bench/sink-drain.ts: a third of the time).
    let ahead: Promise<Fetched | 'empty' | Error> | null = null
    try {
      while (!this.closed) {
        if (this.gate !== null) {
          this.parked?.()
          this.parked = null
          await this.gate.promise
          continue
        }
        const got = await (ahead ?? this.fetch(reader))
        ahead = null
        if (got instanceof Error) {
          this.noteFailure(got)
          await this.sleep(delay)
          continue
        }
        if (got === 'empty') {
          // Listen for commits only while idle: a journal followed from another thread is then woken
          // only when this consumer waits for it.
          await new Promise<void>((resolve) => {
            this.wake = resolve
            this.journal.on('commit', this.onCommit)
            if (this.journal.committedSeq > this.position || this.closed) resolve()
          })
          this.journal.off('commit', this.onCommit)
          this.wake = null
          continue
        }
        // Read ahead while the catalog changed (a dataset dropped, a version added): decode again.
        const batch = got.changes === this.catalog.changes ? got.batch : this.decode(got.read, Infinity)
        if (this.opts.claims !== undefined) batch.entries = await this.claimed(batch.entries, this.opts.claims)
        const last = batch.lastSeq
        const lingers = (this.opts.lingerMs ?? 0) > 0 && batch.rows < this.opts.maxRows / 4 && !got.cut
        if (!lingers) {
          ahead = this.fetch(reader)
          // Awaited at the next turn (or on the way out); a rejection meanwhile is not unhandled.
          ahead.catch(() => undefined)
        }
        const started = performance.now()
        for (;;) {
          try {
            await this.sink.write(batch.entries, last)
            delay = this.opts.retryMinMs ?? 100
            break
          } catch (err) {
            this.noteFailure(err as Error)
            if (this.closed) return
            await this.sleep(delay)
            delay = Math.min(delay * 2, this.opts.retryMaxMs ?? 5000)
          }
        }
        this.position = last
        this.skipped += batch.skipped
        this.lastError = null
        this.journal.ack(this.name, last)
        this.emit('written', { ms: performance.now() - started, rows: batch.rows })
        this.emit('progress', last)
        if (lingers && !this.closed) await this.sleep(this.opts.lingerMs!)
      }
    } finally {
      // A read in flight ends before close() closes the reader.
      await ahead?.catch(() => undefined)
    }
  }

  /** Reads the next entries and decodes them: a batch, `empty` when there are none, or the read's error. */
  private async fetch (reader: JournalReader): Promise<Fetched | 'empty' | Error> {
    // What was committed before this read: a batch ending before it was cut short (by maxEntries,
    // maxRows or the reader's byte limit) and is followed at once.
    const committedBefore = this.journal.committedSeq
    let entries: JournalEntry[]
    try {
      entries = await reader.read(this.opts.maxEntries)
    } catch (err) {
      return err as Error
    }
    if (entries.length === 0) return 'empty'
    if (this.resuming) {
      this.resuming = false
      // A checkpoint older than the journal's oldest segment (a consumer left off for a while, e.g.
      // STREAMGATE_AMQP_OUTBOUND=none): the entries in between are gone for this sink. Say so.
      const first = (entries[0] as JournalEntry).seq
      if (first > this.position + 1) {
        this.opts.log?.warn({ consumer: this.name, from: this.position + 1, to: first - 1 }, 'journal entries missing before this sink read them (deleted with their segment, or undone); skipped')
      }
    }
    const changes = this.catalog.changes
    const batch = this.decode(entries, this.opts.maxRows)
    const last = batch.lastSeq
    // The rest of what was read goes back to the reader for the next batch.
    const cutShort = last < (entries.at(-1) as JournalEntry).seq
    if (cutShort) reader.seek(last + 1)
    return { read: cutShort ? entries.filter((e) => e.seq <= last) : entries, batch, changes, cut: last < committedBefore }
  }

  /**
   * The entries this node's copy may store: those without a message id, and those whose claim it holds
   * (a copy of the same message in another node's journal took it first otherwise). Entries recovered
   * from a lost node claim as that node. When the claims cannot be reached, everything is stored (at
   * least once) rather than held up.
   */
  private async claimed (entries: SinkEntry[], claims: NonNullable<ConsumerOptions['claims']>): Promise<SinkEntry[]> {
    const asked: { i: number, principal: string, origin: string, owner: string }[] = []
    for (let i = 0; i < entries.length; i++) {
      const e = entries[i]!
      if (e.origin === undefined || e.principal === undefined || e.origin.startsWith('replica:')) continue
      asked.push({ i, principal: e.principal, origin: e.origin, owner: `${claims.nodeId}:${e.seq}` })
    }
    if (asked.length === 0) return entries
    let held: boolean[]
    try {
      held = await claims.store.claim(asked)
    } catch (err) {
      this.opts.log?.warn({ err: (err as Error).message, entries: asked.length }, 'message-id claims unreachable: storing without them (a duplicate from another node is possible)')
      return entries
    }
    const drop = new Set<number>()
    for (let k = 0; k < asked.length; k++) if (held[k] !== true) drop.add(asked[k]!.i)
    this.duplicates += drop.size
    return drop.size === 0 ? entries : entries.filter((_, i) => !drop.has(i))
  }

  /**
   * Turns journal entries into sink entries: rows decoded with the schema version each entry was
   * accepted under (payload-only sinks get none). Entries of deleted datasets are skipped.
   */
  private decode (entries: readonly JournalEntry[], maxRows: number): Batch {
    const out: SinkEntry[] = []
    const payloadOnly = this.sink.payloadOnly === true
    let rows = 0
    let skipped = 0
    let lastSeq = this.position
    for (const e of entries) {
      if (rows >= maxRows && out.length > 0) break
      lastSeq = e.seq
      const compiled = this.catalog.version(e.dataset, e.version)
      // Unknown (deleted since), or an entry of an earlier dataset that had the same id.
      if (compiled === undefined || e.seq <= compiled.sinceSeq) { skipped++; continue }
      let decoded: Row[] = NO_ROWS
      if (payloadOnly) {
        rows++
      } else {
        decoded = []
        const bad = compiled.decode(JSON.parse(e.payload.toString('utf8')), e.device, e.arrivalUs, decoded)
        if (bad !== null) {
          skipped++
          this.opts.log?.warn({ seq: e.seq, dataset: e.dataset, reason: bad.detail }, 'journal entry no longer decodes; skipped')
          continue
        }
        rows += decoded.length
      }
      out.push({ seq: e.seq, dataset: e.dataset, version: e.version, device: e.device, payload: e.payload, rows: decoded, origin: e.origin, principal: e.principal })
    }
    return { entries: out, lastSeq, rows, skipped }
  }

  private noteFailure (err: Error): void {
    this.failures++
    this.lastError = err.message
    this.emit('failure', err)
    this.opts.log?.warn({ sink: this.name, err: err.message }, 'sink write failed; will retry')
  }

  /** Sleeps `ms` (retry backoff, linger). New commits do not cut it short; close does. */
  private sleep (ms: number): Promise<void> {
    return new Promise<void>((resolve) => {
      const t = setTimeout(resolve, ms)
      this.onClose = () => { clearTimeout(t); resolve() }
    }).finally(() => { this.onClose = null })
  }

  /** Stops reading after the batch in progress (resolves then) until resume(); the journal keeps what arrives. */
  async pause (): Promise<void> {
    if (this.gate !== null || this.closed || this.running === null) return
    let open: () => void = () => undefined
    const promise = new Promise<void>((resolve) => { open = resolve })
    this.gate = { promise, open }
    await new Promise<void>((resolve) => {
      this.parked = resolve
      this.wake?.()
    })
  }

  resume (): void {
    const g = this.gate
    this.gate = null
    g?.open()
  }

  /** Resolves once everything up to `seq` is stored (or rejects after `timeoutMs`). */
  async waitFor (seq: number, timeoutMs = 30_000): Promise<void> {
    const deadline = Date.now() + timeoutMs
    while (this.position < seq) {
      if (this.closed) throw new Error(`${this.name}: closed at checkpoint ${this.position}`)
      if (Date.now() > deadline) throw new Error(`${this.name}: checkpoint ${this.position} did not reach ${seq} in ${timeoutMs} ms`)
      await new Promise((resolve) => setTimeout(resolve, 10))
    }
  }

  /** Stops after the batch in progress. Idempotent. */
  async close (): Promise<void> {
    this.closed = true
    this.resume()
    this.parked?.()
    this.journal.off('commit', this.onCommit)
    this.wake?.()
    this.onClose?.()
    await this.running
    await this.reader?.close()
    this.journal.unregister(this.name)
  }
}
