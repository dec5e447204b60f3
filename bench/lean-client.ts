// A lean MQTT 3.1.1 client for load generation: PUBLISH frames are built by hand into one buffer per
// event-loop turn (no per-message objects, promises or stream plumbing), incoming packets are parsed
// by mqtt-packet (the parser Aedes uses). mqtt.js costs several times more CPU per message, which on
// two cores would make the generators, not the brokers, the bottleneck.
import { EventEmitter } from 'node:events'
import net from 'node:net'
import mqttPacket from 'mqtt-packet'

export interface LeanOptions { readonly host?: string, readonly port: number, readonly clientId: string, readonly username?: string, readonly password?: string }

function varint (n: number): number[] {
  const out: number[] = []
  do {
    let b = n % 128
    n = Math.floor(n / 128)
    if (n > 0) b |= 0x80
    out.push(b)
  } while (n > 0)
  return out
}

export class LeanClient extends EventEmitter {
  private readonly parser = mqttPacket.parser({ protocolVersion: 4 })
  private pending: Buffer[] = []
  private scheduled = false
  private nextId = 1
  /** Acknowledged-publish callback per message id (QoS 1); allocated at the first QoS 1 publish. */
  private acks: (((id: number) => void) | undefined)[] | null = null
  inflight = 0
  closed = false

  private constructor (private readonly socket: net.Socket) {
    super()
    socket.setNoDelay(true)
    socket.on('data', (d: Buffer) => this.parser.parse(d))
    socket.on('close', () => { this.closed = true; this.emit('close') })
    socket.on('error', (err) => this.emit('error', err))
    this.parser.on('packet', (p: mqttPacket.Packet) => this.onPacket(p))
  }

  static connect (opts: LeanOptions): Promise<LeanClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(opts.port, opts.host ?? '127.0.0.1')
      const c = new LeanClient(socket)
      socket.once('error', reject)
      c.once('connack', (p: mqttPacket.IConnackPacket) => {
        socket.off('error', reject)
        if (p.returnCode !== 0) reject(new Error(`CONNACK ${p.returnCode}`))
        else resolve(c)
      })
      socket.once('connect', () => {
        socket.write(mqttPacket.generate({
          cmd: 'connect', protocolId: 'MQTT', protocolVersion: 4, clean: true, keepalive: 0, clientId: opts.clientId,
          ...(opts.username !== undefined ? { username: opts.username, password: Buffer.from(opts.password ?? '') } : {})
        }))
      })
    })
  }

  private onPacket (p: mqttPacket.Packet): void {
    switch (p.cmd) {
      case 'connack': this.emit('connack', p); break
      case 'puback': {
        const id = p.messageId ?? 0
        const cb = this.acks?.[id]
        if (this.acks !== null) this.acks[id] = undefined
        this.inflight--
        cb?.(id)
        break
      }
      case 'suback': this.emit('suback', p); break
      case 'publish':
        if (p.qos === 1) this.queue(Buffer.from([0x40, 0x02, (p.messageId ?? 0) >> 8, (p.messageId ?? 0) & 0xff]))
        this.emit('message', p.topic, p.payload)
        break
      default: break
    }
  }

  private queue (frame: Buffer): void {
    this.pending.push(frame)
    if (!this.scheduled) {
      this.scheduled = true
      setImmediate(this.flush)
    }
  }

  private readonly flush = (): void => {
    this.scheduled = false
    if (this.pending.length === 0 || this.closed || this.socket.writableEnded) return
    const frames = this.pending
    this.pending = []
    this.socket.write(frames.length === 1 ? frames[0]! : Buffer.concat(frames))
  }

  /** Queues a PUBLISH; for QoS 1 `onAck(messageId)` runs when its PUBACK arrives. Returns the message id. */
  publish (topic: Buffer, payload: Buffer, qos: 0 | 1, onAck?: (id: number) => void): number {
    const idLen = qos === 1 ? 2 : 0
    const rem = 2 + topic.length + idLen + payload.length
    const lenBytes = varint(rem)
    const frame = Buffer.allocUnsafe(1 + lenBytes.length + rem)
    let o = 0
    frame[o++] = 0x30 | (qos << 1)
    for (const b of lenBytes) frame[o++] = b
    frame.writeUInt16BE(topic.length, o)
    o += 2
    o += topic.copy(frame, o)
    let id = 0
    if (qos === 1) {
      id = this.nextId
      this.nextId = this.nextId === 65535 ? 1 : this.nextId + 1
      frame.writeUInt16BE(id, o)
      o += 2
      this.acks ??= new Array(65536)
      this.acks[id] = onAck
      this.inflight++
    }
    payload.copy(frame, o)
    this.queue(frame)
    return id
  }

  subscribe (filter: string, qos: 0 | 1): Promise<number> {
    return new Promise((resolve) => {
      this.once('suback', (p: mqttPacket.ISubackPacket) => resolve(p.granted[0] as number))
      this.queue(mqttPacket.generate({ cmd: 'subscribe', messageId: 1, subscriptions: [{ topic: filter, qos }] }))
    })
  }

  /** Bytes queued here and in the socket, not yet written. */
  get buffered (): number {
    let n = this.socket.writableLength
    for (const f of this.pending) n += f.length
    return n
  }

  /** Resolves once everything queued has been handed to the socket. */
  drain (): Promise<void> {
    return new Promise((resolve) => setImmediate(() => { this.flush(); resolve() }))
  }

  end (): Promise<void> {
    if (this.closed || this.socket.writableEnded) return Promise.resolve()
    this.flush()
    this.on('error', () => undefined) // a reset while closing is expected
    return new Promise((resolve) => {
      this.socket.end(Buffer.from([0xe0, 0x00]), () => resolve())
      setTimeout(() => { this.socket.destroy(); resolve() }, 1000).unref()
    })
  }
}
