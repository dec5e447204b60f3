// The journal replicated to RabbitMQ (STREAMGATE_REPLICATION=rabbitmq-stream): every commit of a
// node's journal (its entries, encoded as in the segment files) is published to that node's stream
// `streamgate.journal.<node id>` and confirmed before any of its appends is acknowledged, so an
// acknowledged record outlives the node's disk (RabbitMQ keeps the stream on its own disks, replicated
// across a RabbitMQ cluster). A commit whose confirm does not come within the timeout is rolled back
// and refused; its sequence numbers are never used again, and an undo message naming them follows it
// on the same channel, so if it reached the stream after all, readers drop it.
//
// Reading: another node recovers a node lost for good by reading its stream from the first message
// (`read`), keeping the last copy of each sequence number.
import { randomUUID } from 'node:crypto'
import type { AmqpConnectionManager, ChannelWrapper } from 'amqp-connection-manager'
import amqplib, { type Channel, type ConsumeMessage } from 'amqplib'
import { decodeEntries, type JournalEntry } from '../../gateway/index.js'
import { connectAmqp, reconnectOnChannelError } from './bridge.js'

export interface ReplicaOptions {
  readonly url: string
  readonly nodeId: string
  /** Longest a commit waits for RabbitMQ's confirm before it is refused. */
  readonly timeoutMs: number
  /** The stream's retention (x-max-age, e.g. `7D`): how long a lost node can be recovered. */
  readonly maxAge: string
  readonly connectionName: string
  readonly heartbeatS: number
  readonly log?: { warn: (obj: object, msg: string) => void }
}

export const streamName = (nodeId: string): string => `streamgate.journal.${nodeId}`

export class StreamReplica {
  private readonly connection: AmqpConnectionManager
  private readonly channel: ChannelWrapper
  private readonly stream: string
  private lastError: string | null = null
  replicated = 0
  failures = 0

  constructor (private readonly opts: ReplicaOptions) {
    this.stream = streamName(opts.nodeId)
    this.connection = connectAmqp(opts.url, opts.connectionName, opts.heartbeatS)
    this.connection.on('disconnect', ({ err }: { err?: Error }) => {
      this.lastError = err?.message ?? 'disconnected'
      opts.log?.warn({ replica: this.stream, err: this.lastError }, 'journal replica: RabbitMQ disconnected; acknowledgements wait for it')
    })
    this.channel = this.connection.createChannel({
      confirm: true,
      json: false,
      setup: async (ch: Channel) => {
        // A closed channel would refuse every commit while the connection looks fine: reconnect.
        reconnectOnChannelError(ch, this.connection, (err) => {
          this.lastError = err.message
          opts.log?.warn({ replica: this.stream, err: err.message }, 'journal replica: RabbitMQ closed the channel; reconnecting')
          return true
        })
        await declareStream(ch, this.stream, opts.maxAge)
      }
    })
    // A failed setup (e.g. the stream declared with another x-max-age: 406) is logged, not only kept.
    this.channel.on('error', (err: Error) => {
      this.lastError = err.message
      opts.log?.warn({ replica: this.stream, err: err.message }, 'journal replica: channel setup failed; acknowledgements wait for it')
    })
  }

  /** The journal's replicate hook: one persistent message per commit, resolved on RabbitMQ's confirm. */
  replicate = async (commit: { firstSeq: number, lastSeq: number, bytes: Buffer }): Promise<void> => {
    try {
      await this.channel.publish('', this.stream, commit.bytes, {
        persistent: true,
        timeout: this.opts.timeoutMs,
        headers: { first: commit.firstSeq, last: commit.lastSeq }
      })
      this.replicated += commit.lastSeq - commit.firstSeq + 1
      this.lastError = null
    } catch (err) {
      this.failures++
      this.lastError = (err as Error).message
      throw err
    }
  }

  /** The journal's onUndo hook: tells readers of the stream to drop these sequence numbers. */
  undone = (u: { firstSeq: number, lastSeq: number }): void => {
    this.channel.publish('', this.stream, Buffer.alloc(0), { persistent: true, headers: { 'streamgate-undo-first': u.firstSeq, 'streamgate-undo-last': u.lastSeq } })
      .catch((err: Error) => this.opts.log?.warn({ replica: this.stream, err: err.message, ...u }, 'journal replica: undo not recorded; a recovery may store those refused entries'))
  }

  status (): { stream: string, replicated: number, failures: number, lastError: string | null, connected: boolean } {
    return { stream: this.stream, replicated: this.replicated, failures: this.failures, lastError: this.lastError, connected: this.connection.isConnected() }
  }

  async close (): Promise<void> {
    await this.channel.close().catch(() => undefined)
    await this.connection.close().catch(() => undefined)
  }
}

async function declareStream (ch: Channel, name: string, maxAge: string): Promise<void> {
  await ch.assertQueue(name, { durable: true, arguments: { 'x-queue-type': 'stream', 'x-max-age': maxAge } })
}

/**
 * Every entry of node `nodeId`'s replicated journal after `afterSeq`, in sequence order, the last copy
 * of each sequence number (a commit refused after a late confirm is followed by the one that reused
 * its numbers). A stream tells no reader where it ends, so the reader first appends a marker message
 * (header `streamgate-marker`, skipped by every reader) and reads from the first message up to it.
 */
export async function readReplica (url: string, nodeId: string, afterSeq: number, idleMs = 30_000): Promise<{ entries: JournalEntry[], messages: number }> {
  const conn = await amqplib.connect(url)
  try {
    const name = streamName(nodeId)
    // A channel RabbitMQ closes (404 here) also emits 'error', which must be heard (it would end the process).
    conn.on('error', () => undefined)
    const check = await conn.createChannel()
    check.on('error', () => undefined)
    await check.checkQueue(name) // rejects (404) when the node never replicated; the channel closes then
    await check.close()
    const marker = randomUUID()
    const pub = await conn.createConfirmChannel()
    pub.on('error', () => undefined)
    pub.sendToQueue(name, Buffer.alloc(0), { persistent: true, headers: { 'streamgate-marker': marker } })
    await pub.waitForConfirms()
    await pub.close()
    const ch = await conn.createChannel()
    ch.on('error', () => undefined)
    await ch.prefetch(500)
    const bySeq = new Map<number, JournalEntry>()
    let messages = 0
    await new Promise<void>((resolve, reject) => {
      // Given up when nothing arrives for `idleMs` (a long stream takes as long as it takes).
      let timer: NodeJS.Timeout
      const idle = (): void => { timer = setTimeout(() => reject(new Error(`read ${messages} messages of ${name}; nothing more for ${idleMs} ms before its end`)), idleMs) }
      idle()
      ch.consume(name, (msg: ConsumeMessage | null) => {
        if (msg === null) return
        clearTimeout(timer)
        idle()
        const headers = msg.properties.headers ?? {}
        const m: unknown = headers['streamgate-marker']
        const undoFirst: unknown = headers['streamgate-undo-first']
        try {
          if (typeof undoFirst === 'number') {
            // A commit refused after all: drop its entries (they come before this message).
            for (let s = undoFirst; s <= Number(headers['streamgate-undo-last']); s++) bySeq.delete(s)
          } else if (m === undefined) {
            messages++
            for (const e of decodeEntries(msg.content)) if (e.seq > afterSeq) bySeq.set(e.seq, e)
          }
        } catch (err) {
          clearTimeout(timer)
          reject(err as Error)
          return
        }
        ch.ack(msg)
        if (m === marker) {
          clearTimeout(timer)
          resolve()
        }
      }, { noAck: false, arguments: { 'x-stream-offset': 'first' } }).catch((err: Error) => { clearTimeout(timer); reject(err) })
    })
    return { entries: [...bySeq.values()].sort((a, b) => a.seq - b.seq), messages }
  } finally {
    await conn.close().catch(() => undefined)
  }
}
