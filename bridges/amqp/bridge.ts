// RabbitMQ (AMQP 0-9-1) in and out, through amqp-connection-manager (reconnects, re-declares the
// topology on every connection). RabbitMQ being down, at start or later, never stops MQTT ingestion.
//
// Inbound: producers publish to the durable topic exchange `streamgate.ingest` with routing key
// `<dataset>.<device>`, a JSON body (one record or an array), and the AMQP `user_id` property set to
// their principal id (RabbitMQ checks it against the connection's user). Each message runs through the
// same pipeline as MQTT and is acked only once it is in the journal. A message with a `message_id`
// is ingested once per principal and id: a redelivery (the gateway crashed after journaling it, before
// its ack reached RabbitMQ) or a producer's resend is acked and counted as a duplicate (the ids of the
// last 100,000 messages, and those in the journal's last two segments after a restart). Bad data or a missing grant: acked
// and written to the rejects log (never requeued in a loop). Journal full: nacked with requeue, and
// consumption pauses until there is room.
//
// Outbound: a journal consumer publishes every accepted entry (whatever protocol brought it) to the
// durable topic exchange `streamgate.records`, persistent, on a confirm channel; its checkpoint moves
// only once RabbitMQ confirmed. `message_id` is `<node id>:<journal position>`, stable across replays
// and unique among the nodes of a cluster (their journals number entries alike).
import amqp, { type AmqpConnectionManager, type ChannelWrapper } from 'amqp-connection-manager'
import type { Channel, ConsumeMessage } from 'amqplib'
import type CircuitBreaker from 'opossum'
import { breakerStatus, createBreaker } from '../breaker.js'
import type { BreakerStatus, CheckpointStore, Dataset, Pipeline, Sink, SinkEntry } from '../../gateway/index.js'
import { JournalFullError, MAX_ORIGIN, RecentOrigins, RejectReason } from '../../gateway/index.js'
import type { Exchanges } from './auth.js'

export interface AmqpOptions {
  readonly url: string
  readonly exchanges: Exchanges
  readonly ingestQueue: string
  readonly prefetch: number
  /** How long a batch of publishes may wait for confirms. */
  readonly publishTimeoutMs: number
  /** AMQP heartbeat: a connection silent for two intervals is dropped and reconnected. */
  readonly heartbeatS: number
  /** The connection's name in RabbitMQ (client property `connection_name`, shown by its management UI). */
  readonly connectionName: string
  readonly log?: { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void }
}

export interface AmqpStatus {
  readonly state: 'connecting' | 'connected' | 'disconnected' | 'closed'
  readonly lastError: string | null
  readonly consuming: boolean
  readonly paused: boolean
  readonly received: number
  readonly acked: number
  readonly rejected: number
  readonly requeued: number
  /** Messages acked without ingesting them: their message_id was ingested already. */
  readonly duplicates: number
  /** Channels RabbitMQ closed (or consumers it cancelled) while the connection stayed: each one reconnects. */
  readonly channelErrors: number
}

const PAUSE_MS = 1000

/** A managed RabbitMQ connection as every bridge opens it (reconnecting each second). */
export function connectAmqp (url: string, connectionName: string, heartbeatS: number): AmqpConnectionManager {
  const manager = amqp.connect([url], {
    heartbeatIntervalInSeconds: heartbeatS,
    reconnectTimeInSeconds: 1,
    // TCP_NODELAY: small frames (acks, confirms, single publishes) must not wait for Nagle.
    connectionOptions: { noDelay: true, clientProperties: { connection_name: connectionName } }
  })
  manager.on('connect', ({ connection }: { connection: { connection?: unknown } }) => coalesceFrames(connection.connection))
  return manager
}

/** The parts of amqplib's Connection (lib/connection.js) coalesceFrames reaches into. */
interface AmqplibMux { _readIncoming?: () => void, out?: { cork: () => void, uncork: () => void } }

/**
 * amqplib writes the frames its channels queued (each publish, each ack) to the socket one `write`
 * at a time: a system call per frame, and as many small TCP segments for RabbitMQ to read. Corked
 * for the length of one pass of its multiplexer, they leave in one `writev`. amqplib has no option for
 * it, so this wraps its multiplexer's pass; a version without one is left as it is (the frames still
 * go out, one by one). test/bridges/amqp-frames.test.ts counts the writes.
 */
export function coalesceFrames (connection: unknown): boolean {
  const mux = (connection as { muxer?: AmqplibMux } | undefined)?.muxer
  const pass = mux?._readIncoming
  const out = mux?.out
  if (mux === undefined || typeof pass !== 'function' || out === undefined || typeof out.cork !== 'function') return false
  mux._readIncoming = function (this: AmqplibMux): void {
    out.cork()
    try {
      pass.call(this)
    } finally {
      out.uncork()
    }
  }
  return true
}

/**
 * RabbitMQ may close one channel and keep the connection (a channel error). amqp-connection-manager
 * opens a new channel only on a new connection, so a lone closed channel would stop consumption (or
 * confirms) for good while everything looks connected: reconnect instead. Call from a channel's setup.
 */
export function reconnectOnChannelError (ch: Channel, connection: AmqpConnectionManager, onError: (err: Error) => boolean): void {
  ch.on('error', (err: Error) => { if (onError(err)) forceReconnect(connection) })
}

function forceReconnect (connection: AmqpConnectionManager): void {
  try { connection.reconnect() } catch { /* closed meanwhile */ }
}

export class AmqpBridge {
  readonly connection: AmqpConnectionManager
  private readonly inbound: ChannelWrapper
  readonly outbound: ChannelWrapper
  private state: AmqpStatus['state'] = 'connecting'
  private lastError: string | null = null
  private consumerTag: string | null = null
  private channel: Channel | null = null
  private paused = false
  private pauseTimer: NodeJS.Timeout | null = null
  private closed = false
  private reconnecting = false
  private readonly counts = { received: 0, acked: 0, rejected: 0, requeued: 0, duplicates: 0, channelErrors: 0 }

  constructor (private readonly opts: AmqpOptions, private readonly pipeline: Pipeline, private readonly origins = new RecentOrigins()) {
    const { exchanges } = opts
    this.connection = connectAmqp(opts.url, opts.connectionName, opts.heartbeatS)
    this.connection.on('connect', () => {
      this.state = 'connected'
      opts.log?.info({ amqp: 'connected' }, 'amqp connected')
    })
    this.connection.on('disconnect', ({ err }: { err?: Error }) => {
      if (this.closed) return
      this.state = 'disconnected'
      // A reconnect we forced keeps its cause (the channel error) as the last error.
      if (!this.reconnecting) this.lastError = err?.message ?? 'disconnected'
      this.reconnecting = false
      this.consumerTag = null
      this.channel = null
      opts.log?.warn({ amqp: 'disconnected', err: this.lastError }, 'amqp disconnected; reconnecting')
    })
    this.connection.on('connectFailed', ({ err }: { err?: Error }) => {
      this.state = 'disconnected'
      this.lastError = err?.message ?? 'connect failed'
    })
    const declare = async (ch: Channel): Promise<void> => {
      reconnectOnChannelError(ch, this.connection, this.onChannelError)
      await ch.assertExchange(exchanges.ingest, 'topic', { durable: true })
      await ch.assertExchange(exchanges.records, 'topic', { durable: true })
    }
    this.outbound = this.connection.createChannel({ confirm: true, json: false, setup: declare })
    this.inbound = this.connection.createChannel({
      confirm: false,
      json: false,
      setup: async (ch: Channel) => {
        await declare(ch)
        await ch.assertQueue(opts.ingestQueue, { durable: true })
        await ch.bindQueue(opts.ingestQueue, exchanges.ingest, '#')
        await ch.prefetch(opts.prefetch)
        this.channel = ch
        if (!this.paused) await this.consume(ch)
      }
    })
    this.inbound.on('error', (err: Error) => { this.lastError = err.message })
    this.outbound.on('error', (err: Error) => { this.lastError = err.message })
  }

  /** A channel closed by RabbitMQ (reconnectOnChannelError): true to reconnect. */
  private readonly onChannelError = (err: Error): boolean => {
    if (this.closed) return false
    this.counts.channelErrors++
    this.lastError = err.message
    this.consumerTag = null
    this.reconnecting = true
    this.opts.log?.warn({ amqp: 'channel closed', err: err.message }, 'RabbitMQ closed a channel; reconnecting')
    return true
  }

  private async consume (ch: Channel): Promise<void> {
    const { consumerTag } = await ch.consume(this.opts.ingestQueue, (msg) => {
      if (msg !== null) this.onMessage(ch, msg)
      // null: RabbitMQ cancelled the consumer (its queue was deleted, or a mirror failed over).
      else if (this.onChannelError(new Error(`RabbitMQ cancelled the consumer of ${this.opts.ingestQueue}`))) forceReconnect(this.connection)
    })
    this.consumerTag = consumerTag
  }

  private onMessage (ch: Channel, msg: ConsumeMessage): void {
    this.counts.received++
    const key = msg.fields.routingKey
    const dot = key.indexOf('.')
    const dataset = dot < 0 ? key : key.slice(0, dot)
    const device = dot < 0 ? '' : key.slice(dot + 1)
    const principal = typeof msg.properties.userId === 'string' ? msg.properties.userId : null
    const topic = `amqp:${this.opts.exchanges.ingest}/${key}`
    if (principal === null) {
      this.refuse(ch, msg, () => this.pipeline.refuse(null, null, device || null, topic, msg.content, RejectReason.NOT_AUTHORIZED, 'the AMQP user_id property (the producer\'s principal id) is required', undefined, true))
      return
    }
    if (dot <= 0 || device === '') {
      this.refuse(ch, msg, () => this.pipeline.refuse(principal, null, null, topic, msg.content, RejectReason.BAD_TOPIC, 'routing keys are <dataset>.<device>', undefined, true))
      return
    }
    const origin = originOf(msg)
    const claim = origin === undefined ? 'new' : this.origins.begin(principal, origin)
    if (claim === 'done') {
      // Ingested already (a redelivery after a crash or a lost ack, or a producer's resend).
      this.counts.duplicates++
      this.ack(ch, msg)
      return
    }
    if (claim === 'pending') {
      // The same id is being journaled now and may still fail: give this copy back rather than ack it.
      // It comes again in a moment and is then acked as a duplicate, or ingested if the first failed.
      this.counts.requeued++
      try { ch.nack(msg, false, true) } catch { /* channel gone: RabbitMQ redelivers */ }
      return
    }
    const refusal = this.pipeline.ingest(principal, dataset, device, msg.content, topic, (err) => {
      if (err === null) {
        if (origin !== undefined) this.origins.commit(principal, origin)
        this.ack(ch, msg)
        return
      }
      if (origin !== undefined) this.origins.abort(principal, origin)
      // Transient (journal full, failed disk): give it back and stop taking more for a while.
      this.counts.requeued++
      try { ch.nack(msg, false, true) } catch { /* channel gone: RabbitMQ redelivers */ }
      if (err instanceof JournalFullError) this.pause()
    }, origin, this.pipeline.deliverer(dataset, device, msg.content))
    if (refusal !== null) {
      if (origin !== undefined) this.origins.abort(principal, origin)
      if ('duplicate' in refusal) {
        // The dataset's own message id (schema.messageId) was ingested already.
        this.counts.duplicates++
        this.ack(ch, msg)
      } else {
        this.refuse(ch, msg, () => undefined)
      }
    }
  }

  private ack (ch: Channel, msg: ConsumeMessage): void {
    try {
      ch.ack(msg)
      this.counts.acked++
    } catch {
      // The channel closed under us: RabbitMQ redelivers the message (at least once).
    }
  }

  private refuse (ch: Channel, msg: ConsumeMessage, record: () => void): void {
    record()
    this.counts.rejected++
    this.ack(ch, msg)
  }

  private pause (): void {
    if (this.paused) return
    this.paused = true
    const ch = this.channel
    const tag = this.consumerTag
    this.consumerTag = null
    if (ch !== null && tag !== null) ch.cancel(tag).catch(() => undefined)
    this.opts.log?.warn({ amqp: 'paused' }, 'journal full: AMQP consumption paused')
    this.pauseTimer = setTimeout(() => {
      this.paused = false
      this.pauseTimer = null
      if (this.channel !== null && !this.closed) this.consume(this.channel).catch((err: Error) => { this.lastError = err.message })
    }, PAUSE_MS)
  }

  get connected (): boolean { return this.connection.isConnected() }

  /** Stops taking new messages (shutdown); unacked ones are redelivered by RabbitMQ. */
  async stopConsuming (): Promise<void> {
    this.paused = true
    const ch = this.channel
    const tag = this.consumerTag
    this.consumerTag = null
    if (ch !== null && tag !== null) await ch.cancel(tag).catch(() => undefined)
  }

  status (): AmqpStatus {
    return { state: this.closed ? 'closed' : this.state, lastError: this.lastError, consuming: this.consumerTag !== null, paused: this.paused, ...this.counts }
  }

  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    if (this.pauseTimer !== null) clearTimeout(this.pauseTimer)
    await this.inbound.close().catch(() => undefined)
    await this.outbound.close().catch(() => undefined)
    await this.connection.close().catch(() => undefined)
  }
}

/**
 * The message's id for deduplication: a non-empty AMQP message_id. AMQP 0-9-1 carries it as a
 * shortstr (at most 255 bytes), so every id fits MAX_ORIGIN; the length check only guards the journal.
 */
function originOf (msg: ConsumeMessage): string | undefined {
  const id: unknown = msg.properties.messageId
  if (typeof id !== 'string' || id === '') return undefined
  // `replica:` origins name entries recovered from a lost node (stored under its identity): a
  // producer's id may not pass for one.
  const origin = id.startsWith('replica:') ? `amqp:${id}` : id
  return Buffer.byteLength(origin) > MAX_ORIGIN ? undefined : origin
}

/** The outbound journal consumer's sink: one persistent AMQP message per journal entry. */
export class AmqpSink implements Sink {
  readonly name = 'amqp'
  readonly payloadOnly = true
  private readonly breakerImpl: CircuitBreaker<[readonly SinkEntry[]], void>
  private lastError: string | null = null

  constructor (
    private readonly bridge: AmqpBridge,
    private readonly opts: AmqpOptions,
    private readonly checkpoints: CheckpointStore & { getCheckpointOrNull: (c: string) => Promise<number | null> },
    /** Where a sink that never ran starts: the journal's end (it delivers what is accepted from now on). */
    private readonly startAt: () => number,
    /** This node's id (STREAMGATE_NODE_ID), the first part of every message_id. */
    private readonly nodeId: string
  ) {
    this.breakerImpl = createBreaker((entries: readonly SinkEntry[]) => this.publish(entries), {
      timeout: opts.publishTimeoutMs,
      resetTimeout: 2000
    })
    // The breaker's error rate lags behind a busy sink's many good batches; a lost connection is
    // known at once: open on it, close when RabbitMQ is back.
    bridge.connection.on('disconnect', () => { if (!this.breakerImpl.opened) this.breakerImpl.open() })
    bridge.connection.on('connect', () => { if (!this.breakerImpl.closed) this.breakerImpl.close() })
  }

  breaker (): BreakerStatus {
    return breakerStatus(this.breakerImpl, this.lastError)
  }

  async checkpoint (): Promise<number> {
    const c = await this.checkpoints.getCheckpointOrNull(this.name)
    if (c !== null) return c
    const start = this.startAt()
    await this.checkpoints.setCheckpoint(this.name, start)
    return start
  }

  async prepareDataset (_ds: Dataset): Promise<void> {}
  async dropDataset (_dataset: Dataset): Promise<void> {}

  private async publish (entries: readonly SinkEntry[]): Promise<void> {
    // Publishing while disconnected would only queue in memory; fail fast and let the journal hold it.
    if (!this.bridge.connected) throw new Error('RabbitMQ is not connected')
    const ex = this.opts.exchanges.records
    // One channel, in order: per device the order of the journal is kept.
    await Promise.all(entries.map((e) => this.bridge.outbound.publish(ex, `${e.dataset}.${e.device}`, e.payload, {
      persistent: true,
      messageId: `${this.nodeId}:${e.seq}`,
      contentType: 'application/json',
      timestamp: Math.floor(Date.now() / 1000),
      headers: { dataset: e.dataset, schemaVersion: e.version, device: e.device, node: this.nodeId, seq: e.seq }
    })))
  }

  async write (entries: readonly SinkEntry[], lastSeq: number): Promise<void> {
    try {
      await this.breakerImpl.fire(entries)
      this.lastError = null
    } catch (err) {
      this.lastError = (err as Error).message
      throw err
    }
    await this.checkpoints.setCheckpoint(this.name, lastSeq)
  }
}

