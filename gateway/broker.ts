// The MQTT side: an Aedes broker whose hooks call the ACL and the pipeline, and its listeners
// (TCP, WebSocket, and TLS variants). Aedes speaks MQTT 3.1 and 3.1.1.
import './quiet-debug.js'
import http from 'node:http'
import https from 'node:https'
import net from 'node:net'
import tls from 'node:tls'
import { Aedes, type AedesPublishPacket, type AuthenticateError, type Client, type PublishPacket, type Subscription } from 'aedes'
import websocketStream from 'websocket-stream'
import type { Config } from '../config/index.js'
import type { AccessState, ApiKey, Principal } from './access.js'
import { RejectReason } from './errors.js'
import { listen } from './listen.js'
import type { Management } from './management.js'
import type { Duplicate, Pipeline, Refusal } from './pipeline.js'
import type { SharedRates } from './ports.js'
import { AddressGate, type Bucket, Buckets, FailureWindow, LeasedBucket } from './limits.js'
import { certificateIdentity, mqttTlsOptions } from './tls.js'
import { classifyFilter, datasetOfTopic, parsePublishTopic } from './topics.js'

/** Where a refused publish is sent so Aedes acknowledges it without delivering it: no filter a client may hold matches a `$` topic ([MQTT-4.7.2-1]). */
export const DROP_TOPIC = '$streamgate/dropped'

export interface Session {
  readonly principal: string
  /** The API key it logged in with; null: a client certificate (whose expiry is `certNotAfter`). */
  readonly keyId: string | null
  readonly certNotAfter: number | null
  readonly connectedAt: string
  /** The principal's publish bucket (shared by its sessions); null: no publish limit for its kind. */
  readonly publishes: Bucket | null
}

/** How long a publisher may be behind its rate (throttled) before it is disconnected. */
const MAX_THROTTLE_MS = 2000

const noop = (): void => undefined

/** A live MQTT session as the API lists it. */
export interface SessionInfo {
  readonly clientId: string
  readonly principal: string
  readonly keyId: string | null
  readonly address: string | null
  readonly connectedAt: string
}

const SESSION = Symbol('streamgate.session')
type SessionClient = Client & { [SESSION]?: Session }

/** A client's QoS 1 PUBACKs not written yet, in the order their PUBLISHes came ([MQTT-4.6.0-2]). */
const ACKS = Symbol('streamgate.acks')
interface PendingAck { readonly id: number, ready: boolean }
type AckingClient = Client & { [ACKS]?: PendingAck[] }

export function sessionOf (client: Client | null): Session | undefined {
  return client === null ? undefined : (client as SessionClient)[SESSION]
}

export interface Listeners {
  readonly mqtt: net.AddressInfo
  readonly ws: net.AddressInfo
  readonly mqtts: net.AddressInfo | null
  readonly wss: net.AddressInfo | null
}

export interface BrokerDeps {
  readonly config: Config
  readonly access: AccessState
  readonly pipeline: Pipeline
  readonly management: Management
  readonly log: { info: (obj: object, msg: string) => void, warn: (obj: object, msg: string) => void }
  /** Aedes' emitter and persistence shared with other nodes (Redis); in memory when absent. */
  readonly shared?: { readonly mq: unknown, readonly persistence: unknown }
  /** Connect and publish rates per principal counted across every node (Redis); this node's own when absent. */
  readonly rates?: SharedRates
}

/** The client's source address (TCP or TLS socket, or the WebSocket's request). */
function addressOf (client: Client): string | null {
  const sock = client.conn as Partial<net.Socket> | undefined
  if (typeof sock?.remoteAddress === 'string') return sock.remoteAddress
  const req = (client as Client & { req?: { socket?: { remoteAddress?: string } } }).req
  return req?.socket?.remoteAddress ?? null
}

function authError (returnCode: 2 | 3 | 4 | 5, message: string): AuthenticateError {
  return Object.assign(new Error(message), { returnCode })
}

const PROTOCOL_REASONS: ReadonlyArray<[string, RejectReason]> = [
  ['too many levels', RejectReason.TOPIC_TOO_DEEP],
  ['is not allowed in PUBLISH', RejectReason.WILDCARD_IN_TOPIC]
]

export class Broker {
  readonly aedes: Aedes
  private readonly servers: (net.Server | http.Server)[] = []
  private readonly byPrincipal = new Map<string, Set<SessionClient>>()
  private closed = false
  /** Holds sockets so PUBACKs and deliveries written in one cycle leave in one write per client. */
  private readonly writes = new WriteCoalescer()
  readonly stats = { connects: 0, authFailures: 0, protocolErrors: 0, throttled: 0, rateLimitedDisconnects: 0, connectsRefusedRate: 0, connectionsRefusedAddress: 0 }
  private readonly connectBuckets: Buckets
  private readonly publishBuckets: Buckets
  private readonly loginFailures: FailureWindow
  private readonly gate: AddressGate
  /** The MQTTS and WSS servers, whose certificates SIGHUP reloads. */
  readonly tlsServers: tls.Server[] = []

  private constructor (aedes: Aedes, private readonly deps: BrokerDeps) {
    this.aedes = aedes
    const kindOf = (principal: string): 'device' | 'service' | 'admin' => deps.access.getPrincipal(principal)?.kind ?? 'device'
    const { connectRate, publishRate, authFailuresPerMinute } = deps.config.mqttLimits
    this.connectBuckets = new Buckets((p) => connectRate[kindOf(p)])
    const rates = deps.rates
    this.publishBuckets = rates === undefined
      ? new Buckets((p) => publishRate[kindOf(p)])
      : new Buckets((p) => publishRate[kindOf(p)], (rate, p) => new LeasedBucket(rate, async (points) => (await rates.take(`mqtt-publish:${p}`, rate, points)).ok))
    this.loginFailures = new FailureWindow(authFailuresPerMinute, 60_000)
    this.gate = new AddressGate(deps.config.mqttLimits.maxConnectionsPerAddress, deps.config.mqttLimits.acceptRatePerAddress)
  }

  static async create (deps: BrokerDeps): Promise<Broker> {
    const { config } = deps
    // The hooks are bound to the Broker once it exists; Aedes reads them from its options at construction.
    const holder: { b?: Broker } = {}
    const aedes = await Aedes.createBroker({
      ...(deps.shared !== undefined ? { mq: deps.shared.mq, persistence: deps.shared.persistence } : {}),
      drainTimeout: config.limits.drainTimeoutMs,
      connectTimeout: config.limits.connectTimeoutMs,
      maxTopicLevels: config.limits.maxTopicLevels,
      heartbeatInterval: 60_000,
      preConnect: (client, _packet, done) => {
        holdDeliveriesUntilConnack(client)
        done(null, true)
      },
      authenticate: (client, username, password, done) => holder.b!.authenticate(client, username, password, done),
      authorizePublish: (client, packet, done) => holder.b!.authorizePublish(client, packet, done),
      authorizeSubscribe: (client, sub, done) => holder.b!.authorizeSubscribe(client, sub, done),
      authorizeForward: (client, packet) => holder.b!.authorizeForward(client, packet)
    })
    skipDropped(aedes)
    const broker = new Broker(aedes, deps)
    holder.b = broker
    broker.wire()
    deps.pipeline.setFanout((dataset, device, payload) => {
      aedes.publish({ cmd: 'publish', topic: `datasets/${dataset}/${device}`, payload, qos: 1, retain: false, dup: false }, noop)
    })
    return broker
  }

  /**
   * Every second: sessions whose key expired (e.g. the old key after a rotation's grace) or whose
   * principal can no longer authenticate end. Revocations and disabling end them at once (events).
   */
  private readonly sweep = setInterval(() => {
    const now = Date.now()
    this.gate.sweep()
    for (const set of this.byPrincipal.values()) {
      for (const c of [...set]) {
        const s = sessionOf(c)
        if (s === undefined || !this.stillValid(s, now)) c.close()
      }
    }
  }, 1000).unref()

  /** May the session go on: its principal enabled, its key not revoked or expired (or its certificate not expired)? */
  private stillValid (s: Session, now: number): boolean {
    const principal = this.deps.access.getPrincipal(s.principal)
    if (principal === undefined || principal.disabled) return false
    if (s.keyId === null) return s.certNotAfter === null || s.certNotAfter > now
    const key = this.deps.access.getKey(s.keyId)
    return key !== undefined && key.revokedAt === null && (key.expiresAt === null || Date.parse(key.expiresAt) > now)
  }

  private wire (): void {
    const { management } = this.deps
    this.aedes.on('client', (client: Client) => {
      const s = sessionOf(client)
      if (s === undefined) return
      let set = this.byPrincipal.get(s.principal)
      if (set === undefined) this.byPrincipal.set(s.principal, set = new Set())
      set.add(client as SessionClient)
      // A key revoked (or a principal disabled) between CONNECT and CONNACK must not leave a live session.
      if (!this.stillValid(s, Date.now())) client.close()
    })
    this.aedes.on('clientDisconnect', (client: Client) => {
      this.forget(client as SessionClient)
    })
    this.aedes.on('clientError', (client: Client, err: Error) => {
      this.stats.protocolErrors++
      const hit = PROTOCOL_REASONS.find(([needle]) => err.message.includes(needle))
      if (hit !== undefined) {
        const s = sessionOf(client)
        this.deps.pipeline.refuse(s?.principal ?? null, null, null, null, undefined, hit[1], err.message, undefined, true)
      }
      this.forget(client as SessionClient)
    })
    management.on('keyRevoked', (key: ApiKey) => {
      for (const c of this.byPrincipal.get(key.principal) ?? []) if (sessionOf(c)?.keyId === key.id) c.close()
    })
    management.on('principalLocked', (principal: string) => {
      for (const c of [...this.byPrincipal.get(principal) ?? []]) c.close()
    })
  }

  private forget (client: SessionClient): void {
    const s = sessionOf(client)
    if (s === undefined) return
    const set = this.byPrincipal.get(s.principal)
    set?.delete(client)
    if (set?.size === 0) this.byPrincipal.delete(s.principal)
  }

  /** Live sessions (for the API), sorted by client id. */
  sessions (): SessionInfo[] {
    const out: SessionInfo[] = []
    for (const [principal, set] of this.byPrincipal) {
      for (const c of set) {
        const s = sessionOf(c)
        out.push({ clientId: c.id, principal, keyId: s?.keyId ?? null, address: addressOf(c), connectedAt: s?.connectedAt ?? '' })
      }
    }
    return out.sort((a, b) => a.clientId < b.clientId ? -1 : a.clientId > b.clientId ? 1 : 0)
  }

  /** Closes the session of `clientId`; false when there is none. */
  kick (clientId: string): boolean {
    for (const set of this.byPrincipal.values()) {
      for (const c of set) {
        if (c.id === clientId) {
          c.close()
          return true
        }
      }
    }
    return false
  }

  // ---- hooks

  /**
   * MQTT username = principal id, password = one of its API keys. CONNACK 4 for bad credentials, 5 for
   * a disabled principal, 3 (server unavailable) for an address with too many failed logins in the
   * last minute or a principal connecting faster than its kind's rate. Refusals are audited.
   */
  private authenticate (client: Client, username: string | undefined, password: Buffer | undefined, done: (err: AuthenticateError | null, ok: boolean | null) => void): void {
    const address = addressOf(client)
    const refuse = (code: 2 | 3 | 4 | 5, reason: string, counts: boolean): void => {
      this.stats.authFailures++
      if (counts) this.loginFailures.fail(address ?? '')
      this.deps.log.warn({ clientId: client.id, username: username?.slice(0, 128), address, reason }, 'mqtt connect refused')
      this.deps.management.denied({ principal: username === undefined ? null : username.slice(0, 128), address, requestId: null }, 'mqtt.connect', `mqtt/${client.id.slice(0, 128)}`, reason)
      done(authError(code, reason), false)
    }
    // [MQTT-1.5.3-1] [MQTT-1.5.3-2]: no U+0000, and ill-formed UTF-8 (decoded as U+FFFD) is refused; a length limit too.
    const id = client.id
    if (id.length > this.deps.config.limits.maxClientId || id.includes('\u0000') || id.includes('\ufffd')) {
      return refuse(2, `client id refused: at most STREAMGATE_MAX_CLIENT_ID=${this.deps.config.limits.maxClientId} characters of well-formed UTF-8 without NUL`, false)
    }
    if (this.loginFailures.blocked(address ?? '')) return refuse(3, 'too many failed logins from this address; retry in a minute', false)
    const admit = (principal: Principal, keyId: string | null, certNotAfter: number | null): void => {
      const overRate = (): void => {
        this.stats.connectsRefusedRate++
        refuse(3, `${principal.id} connects faster than STREAMGATE_MQTT_CONNECT_RATE_${principal.kind.toUpperCase()}`, false)
      }
      const accept = (): void => {
        (client as SessionClient)[SESSION] = { principal: principal.id, keyId, certNotAfter, connectedAt: new Date().toISOString(), publishes: this.publishBuckets.get(principal.id) }
        this.stats.connects++
        done(null, true)
      }
      const rate = this.deps.config.mqttLimits.connectRate[principal.kind]
      if (this.deps.rates !== undefined && rate > 0) {
        // Counted across every node; should even the fallback fail, the connect is let in.
        this.deps.rates.take(`mqtt-connect:${principal.id}`, rate).then((r) => { if (r.ok) accept(); else overRate() }, accept)
        return
      }
      if (this.connectBuckets.get(principal.id)?.tryTake() === false) return overRate()
      accept()
    }
    // A verified client certificate (STREAMGATE_TLS_CLIENT_AUTH) and no password: its CN is the principal.
    const cert = password === undefined || password.length === 0 ? certificateIdentity(client.conn, client.req) : null
    if (cert !== null) {
      if (username !== undefined && username !== '' && username !== cert.cn) return refuse(4, 'the username is not the client certificate\'s CN', true)
      const principal = this.deps.access.getPrincipal(cert.cn)
      if (principal === undefined) return refuse(4, 'unknown_principal', true)
      if (principal.disabled) return refuse(5, 'disabled', true)
      return admit(principal, null, cert.notAfter)
    }
    if (username === undefined || password === undefined || password.length === 0 || password.length > 1024) return refuse(4, 'username and password (an API key) are required, or a client certificate', true)
    const r = this.deps.access.authenticate(username, password.toString('utf8'), Date.now())
    if (!r.ok) return refuse(r.reason === 'disabled' ? 5 : 4, r.reason, true)
    admit(r.principal, r.key.id, null)
  }

  private authorizePublish (client: Client | null, packet: PublishPacket, done: (err?: Error | null) => void): void {
    const session = sessionOf(client)
    if (session === undefined) {
      done(new Error('not authenticated'))
      return
    }
    if (session.publishes !== null) {
      // Over its rate a publisher is throttled (its next packets wait: Aedes reads a client's next
      // packets only once these are handled), and disconnected once it is too far behind.
      const wait = session.publishes.take()
      if (wait > 0) {
        if (wait > MAX_THROTTLE_MS) {
          this.stats.rateLimitedDisconnects++
          this.deps.log.warn({ clientId: client!.id, principal: session.principal }, 'publisher far over its rate: disconnected')
          done(new Error('publishing faster than the principal\'s rate'))
          return
        }
        this.stats.throttled++
        setTimeout(() => this.admitPublish(client!, session, packet, done), wait)
        return
      }
    }
    this.admitPublish(client!, session, packet, done)
  }

  private admitPublish (client: Client, session: Session, packet: PublishPacket, done: (err?: Error | null) => void): void {
    // A throttled publish may come back after its session ended (key revoked, kicked): drop it.
    if ((client as Client & { closed?: boolean }).closed === true) {
      done(new Error('session closed'))
      return
    }
    const topic = packet.topic
    // streamgate keeps no retained messages (README: STREAMGATE_REDIS_URL).
    packet.retain = false
    const addr = parsePublishTopic(topic)
    if (addr === null) {
      // Outside the dataset grammar: admins may use plain MQTT topics (not stored); `$` topics are reserved.
      if (topic.charCodeAt(0) !== 36 /* $ */ && this.deps.access.getPrincipal(session.principal)?.kind === 'admin') {
        if (packet.qos === 1 && ((client as AckingClient)[ACKS]?.length ?? 0) > 0) this.ackInOrder(client, packet, done)
        else done(null)
        return
      }
      this.deps.pipeline.refuse(session.principal, null, null, topic, packet.payload as Buffer, RejectReason.BAD_TOPIC,
        'publish topics are datasets/<dataset>/<device>[/...]', undefined, true)
      this.audit(client, session, 'mqtt.publish', `mqtt/topic/${topic.slice(0, 256)}`, 'publish topics are datasets/<dataset>/<device>[/...]')
      done(new Error('topic outside datasets/<dataset>/<device>'))
      return
    }
    const payload = packet.payload as Buffer
    // QoS 0 promises nothing: Aedes delivers it at once, and nothing waits for the journal.
    if (packet.qos === 0) {
      const refusal = this.deps.pipeline.ingest(session.principal, addr.dataset, addr.device, payload, topic, this.onQos0Appended)
      if (refusal === null) done(null)
      else this.refused(client, session, packet, addr.dataset, refusal, done)
      return
    }
    if (packet.qos === 2 && packet.dup) {
      // A QoS 2 PUBLISH sent again (its PUBREC was lost; a resend carries DUP [MQTT-3.3.1-1]) is
      // answered by Aedes with a PUBREC alone, after this hook: it must not be journaled or delivered
      // a second time. Both Aedes persistences answer a miss with "no such packet".
      const persistence = (this.aedes as unknown as { persistence: { incomingGetPacket: (c: Client, p: PublishPacket) => Promise<unknown> } }).persistence
      persistence.incomingGetPacket(client, packet).then(
        () => { packet.topic = DROP_TOPIC; done(null) },
        (err: Error) => {
          if (err?.message === 'no such packet') this.admitDurable(client, session, packet, addr.dataset, addr.device, done)
          else done(err)
        })
      return
    }
    this.admitDurable(client, session, packet, addr.dataset, addr.device, done)
  }

  private admitDurable (client: Client, session: Session, packet: PublishPacket, dataset: string, device: string, done: (err?: Error | null) => void): void {
    const { topic, qos } = packet
    const payload = packet.payload as Buffer
    // QoS 1/2: subscribers get the message when STREAMGATE_FANOUT says (the pipeline calls `deliver`),
    // and Aedes' own publish of the packet goes nowhere. QoS 1: the PUBACK is written here once the
    // message is durable (Aedes is handed it as QoS 0, so it writes none). Aedes reads the client's
    // next packets once `done` is called: for QoS 1 once the fan-out is written (or handed to Redis),
    // so publishers go no faster than their subscribers read, as with Aedes' own publish (without that
    // wait the QoS 1 flood fell to 0.25x bare Aedes, deliveries piling up); not once it is durable
    // too, unless the client has more than STREAMGATE_MQTT_MAX_UNACKED PUBLISHes waiting for the disk
    // (each fdatasync held up every publisher's next read: at 20k msg/s pub→sub p50 0.6 against Aedes'
    // 0.35 ms, and every slow fdatasync a stall of every publisher). QoS 2: once durable (Aedes then
    // writes the PUBREC). A refusal by the journal (quota, failed disk) disconnects without an
    // acknowledgement, also when it comes after Aedes went on: this PUBLISH's PUBACK never becomes
    // ready, so no later one of the client's is written either ([MQTT-4.6.0-2]).
    const ack = qos === 1 ? this.pendingAck(client, packet.messageId ?? 0) : null
    const untilDurable = ack === null || (client as AckingClient)[ACKS]!.length > this.deps.config.mqttLimits.maxUnacked
    // What `done` waits for: the journal's answer when untilDurable, and a QoS 1 fan-out once it starts.
    let waiting = untilDurable ? 1 : 0
    let answered = false
    const finish = (): void => {
      if (--waiting > 0 || answered) return
      answered = true
      done(null)
    }
    const deliver = (): void => {
      if (qos === 1) waiting++
      this.aedes.publish({ cmd: 'publish', topic, payload, qos, retain: false, dup: false }, qos === 1 ? finish : noop)
    }
    const refusal = this.deps.pipeline.ingest(session.principal, dataset, device, payload, topic, (err) => {
      if (err === null) {
        if (ack !== null) this.acknowledge(client, ack)
        if (untilDurable) finish()
      } else if (!answered) {
        answered = true
        done(err)
      } else if ((client as Client & { closed?: boolean }).closed !== true) {
        // Aedes went on already: end the connection as its `done(err)` would have.
        client.emit('error', err)
      }
    }, undefined, deliver)
    if (refusal !== null) return this.refused(client, session, packet, dataset, refusal, done, ack)
    packet.topic = DROP_TOPIC
    if (qos === 1) packet.qos = 0
  }

  /**
   * A QoS 1 publish to a plain topic while the client's earlier PUBLISHes wait for the journal: Aedes
   * would acknowledge it at once, ahead of theirs [MQTT-4.6.0-2]. Its PUBACK joins the client's queue
   * instead, and the broker publishes it at QoS 1 itself (Aedes is handed it as QoS 0, to DROP_TOPIC).
   */
  private ackInOrder (client: Client, packet: PublishPacket, done: (err?: Error | null) => void): void {
    const { topic, payload } = packet
    this.acknowledge(client, this.pendingAck(client, packet.messageId ?? 0))
    packet.topic = DROP_TOPIC
    packet.qos = 0
    this.aedes.publish({ cmd: 'publish', topic, payload, qos: 1, retain: false, dup: false }, done)
  }

  /** A QoS 1 PUBACK to write once `ready`, after those of the client's earlier PUBLISHes. */
  private pendingAck (client: Client, id: number): PendingAck {
    const c = client as AckingClient
    const ack = { id, ready: false }
    ;(c[ACKS] ??= []).push(ack)
    return ack
  }

  /** `ack` may be written: with the client's ready PUBACKs before it, or once those still waiting are. */
  private acknowledge (client: Client, ack: PendingAck): void {
    ack.ready = true
    this.writeAcks(client)
  }

  /**
   * Writes the client's ready PUBACKs (0x40, remaining length 2, the packet identifier [MQTT-3.4]) up
   * to the first one still waiting, with the others of this cycle, unless the connection is gone.
   */
  private writeAcks (client: Client): void {
    const queue = (client as AckingClient)[ACKS]!
    const conn = client.conn as net.Socket
    const gone = !conn.writable || (client as Client & { closed?: boolean }).closed === true
    if (!gone) this.writes.hold(conn)
    let n = 0
    while (n < queue.length && queue[n]!.ready) {
      const id = queue[n++]!.id
      if (!gone) conn.write(Buffer.from([0x40, 2, id >> 8, id & 0xff]))
    }
    queue.splice(0, n)
  }

  /** A publish the pipeline refused: denied ones disconnect; bad data is acknowledged and goes nowhere. */
  private refused (client: Client, session: Session, packet: PublishPacket, dataset: string, refusal: Refusal | Duplicate, done: (err?: Error | null) => void, ack: PendingAck | null = null): void {
    if (refusal.denied) {
      this.audit(client, session, 'mqtt.publish', `datasets/${dataset}`, refusal.detail)
      done(new Error(refusal.detail))
      return
    }
    // Bad data (or a resend of a message stored already): MQTT 3.1.1 has no negative PUBACK.
    // Acknowledge, deliver to nobody, keep the client connected; a QoS 1 PUBACK after those of the
    // client's earlier PUBLISHes still waiting for the journal.
    packet.topic = DROP_TOPIC
    if (ack !== null) {
      packet.qos = 0
      this.acknowledge(client, ack)
    }
    done(null)
  }

  /** Records a denied MQTT access in the audit log. */
  private audit (client: Client, session: Session, action: string, resource: string, detail: string): void {
    this.deps.management.denied({ principal: session.principal, address: addressOf(client), requestId: client.id }, action, resource, detail)
  }

  /** Lets every held write leave (after the deliveries already queued are written): for shutdown. */
  async flushWrites (): Promise<void> {
    await new Promise((resolve) => setImmediate(resolve))
    this.writes.releaseAll()
  }

  private readonly onQos0Appended = (err: Error | null): void => {
    if (err !== null) this.deps.pipeline.refuse(null, null, null, null, undefined, RejectReason.JOURNAL_FULL, 'QoS 0 message dropped: ' + err.message)
  }

  /** SUBACK 0x80 for filters outside the principal's grants ([MQTT-3.9.3-2]). */
  private authorizeSubscribe (client: Client, sub: Subscription, done: (err: Error | null, sub?: Subscription | null) => void): void {
    const session = sessionOf(client)
    if (session !== undefined && this.deps.access.canSubscribe(session.principal, classifyFilter(sub.topic))) {
      done(null, sub)
      return
    }
    this.deps.log.warn({ clientId: client.id, principal: session?.principal, filter: sub.topic.slice(0, 256) }, 'subscription refused')
    if (session !== undefined) this.audit(client, session, 'mqtt.subscribe', `mqtt/filter/${sub.topic.slice(0, 256)}`, 'the filter reaches beyond the principal\'s grants')
    done(null, null)
  }

  /** Re-checks the grant on every delivery, so a revoked grant stops deliveries at once. */
  private authorizeForward (client: Client, packet: AedesPublishPacket): AedesPublishPacket | null {
    const session = sessionOf(client)
    if (session === undefined) return null
    const dataset = datasetOfTopic(packet.topic)
    const allowed = dataset !== null ? this.deps.access.can(session.principal, 'subscribe', dataset) : this.deps.access.canSubscribe(session.principal, classifyFilter(packet.topic))
    if (!allowed) return null
    // A commit delivers many messages at once: they leave in one write per subscriber.
    this.writes.hold(client.conn)
    return packet
  }

  // ---- listeners

  /** Binds every configured listener; resolves with the bound addresses (a port of 0 picks a free one). */
  async listen (): Promise<Listeners> {
    const { config } = this.deps
    const handle = this.aedes.handle
    // Per-address admission, before a byte is read (TLS: before the handshake).
    const gate = this.gate
    const admitted = (socket: net.Socket): boolean => {
      const address = socket.remoteAddress ?? ''
      if (gate.admit(address) !== 'ok') {
        this.stats.connectionsRefusedAddress++
        socket.destroy()
        return false
      }
      socket.once('close', () => gate.release(address))
      return true
    }
    const gateListener = (server: net.Server): void => { if (gate.enabled) server.prependListener('connection', admitted) }
    const tcp = net.createServer({ noDelay: true }, gate.enabled ? (s) => { if (admitted(s)) handle(s) } : handle)
    // Slowloris: a client gets this long for its upgrade request's headers and the request.
    const httpLimits = { headersTimeout: config.limits.httpHeadersTimeoutMs, requestTimeout: config.limits.httpRequestTimeoutMs, connectionsCheckingInterval: 1000 }
    const wsHttp = http.createServer(httpLimits)
    gateListener(wsHttp)
    wsHttp.on('connection', (s: net.Socket) => s.setNoDelay(true))
    websocketStream.createServer({ server: wsHttp, path: '/mqtt', perMessageDeflate: false }, handle as never)
    const mqtt = await this.bind(tcp, 'mqtt', config.ports.mqtt)
    const ws = await this.bind(wsHttp, 'ws', config.ports.ws)
    let mqtts: net.AddressInfo | null = null
    let wss: net.AddressInfo | null = null
    if (config.tls !== null) {
      const opts = mqttTlsOptions(config.tls)
      const tlsServer = tls.createServer(opts, handle)
      this.tlsServers.push(tlsServer)
      gateListener(tlsServer)
      tlsServer.on('secureConnection', (s: tls.TLSSocket) => s.setNoDelay(true))
      mqtts = await this.bind(tlsServer, 'mqtts', config.ports.mqtts)
      const wssHttp = https.createServer({ ...opts, ...httpLimits })
      this.tlsServers.push(wssHttp)
      gateListener(wssHttp)
      wssHttp.on('secureConnection', (s: tls.TLSSocket) => s.setNoDelay(true))
      websocketStream.createServer({ server: wssHttp, path: '/mqtt', perMessageDeflate: false }, handle as never)
      wss = await this.bind(wssHttp, 'wss', config.ports.wss)
    }
    return { mqtt, ws, mqtts, wss }
  }

  private bind (server: net.Server | http.Server, name: 'mqtt' | 'ws' | 'mqtts' | 'wss', port: number): Promise<net.AddressInfo> {
    this.servers.push(server)
    const { config, log } = this.deps
    return listen(server, name, port, config.bind, config.explicitPorts.has(name), log)
  }

  /** Stops accepting connections; connected clients go on (shutdown: their in-flight publishes finish). */
  stopAccepting (): void {
    for (const s of this.servers) if (s.listening) s.close()
  }

  /** Stops accepting connections, then closes every client and the broker. Idempotent. */
  async close (): Promise<void> {
    if (this.closed) return
    this.closed = true
    clearInterval(this.sweep)
    this.stopAccepting()
    for (const s of this.servers) if ('closeAllConnections' in s) s.closeAllConnections()
    await new Promise<void>((resolve) => this.aedes.close(() => resolve()))
  }
}

/**
 * Aedes publishes every PUBLISH it is handed, after its PUBACK; those streamgate re-addressed to
 * DROP_TOPIC (fanned out by the pipeline already, or refused) would only be matched against every
 * subscription for nothing (and, with nodes sharing Redis, sent through Redis): they end here.
 */
function skipDropped (aedes: Aedes): void {
  const publish = aedes.publish.bind(aedes) as (packet: PublishPacket, client: unknown, done?: (err?: Error) => void) => void
  ;(aedes as unknown as { publish: typeof publish }).publish = (packet, client, done) => {
    if (packet.topic !== DROP_TOPIC) return publish(packet, client, done)
    const cb = typeof client === 'function' ? client as (err?: Error) => void : done
    cb?.()
  }
}

type Deliver = (packet: unknown, cb: () => void) => void

/**
 * Writes nothing to a client before its CONNACK. Aedes restores a persistent session's subscriptions
 * before it sends CONNACK and writes what they deliver meanwhile at once: a PUBLISH ahead of the
 * CONNACK, where [MQTT-3.2.0-1] wants CONNACK first. mqtt.js never gets past it (it holds that PUBLISH
 * until the connection is up, and does not read the CONNACK behind it), so the client times out. With
 * nodes sharing Redis a message reaches a node a few milliseconds after its publisher's PUBACK, so a
 * session reconnecting right after a publish met it often. Nothing is lost by holding back: Aedes
 * queues a QoS 1 message for every persistent subscription before it fans it out, and sends that
 * queue right after the CONNACK; a QoS 0 delivery is dropped, as for a session still offline.
 */
function holdDeliveriesUntilConnack (client: Client): void {
  const c = client as unknown as { connackSent?: boolean, deliverQoS: Deliver, deliver0: Deliver }
  const qos = c.deliverQoS
  const qos0 = c.deliver0
  c.deliverQoS = (packet, cb) => { if (c.connackSent === true) qos(packet, cb); else setImmediate(cb) }
  c.deliver0 = (packet, cb) => { if (c.connackSent === true) qos0(packet, cb); else setImmediate(cb) }
}

/**
 * Holds client sockets corked so the packets a commit produces leave in one write (one syscall, one
 * loopback segment) per client instead of one each: a commit's PUBACKs are written in its callbacks,
 * and Aedes writes each delivery in a setImmediate of its own, queued after the hold. A cycle of holds
 * is armed once the callback that made them returns (process.nextTick) and released by a setImmediate
 * queued then, i.e. right after the writes that callback queued: in the next turn, not a turn later.
 *
 * A socket is corked once at most (Node flushes only when its cork count is back to zero, so nested
 * holds made every turn under steady load would hold it for good). A socket held again after its
 * cycle was armed has writes queued after that cycle's release: it is carried into the next cycle
 * once, unless CARRY_BYTES are waiting already, and released then. So a write waits a few turns of
 * the event loop at most, and 'drain' (Aedes's backpressure) follows soon after. TLS sockets are
 * net.Sockets too; other streams (MQTT over WebSocket: one frame per chunk anyway) are not held.
 */
export class WriteCoalescer {
  /**
   * Each socket's state, kept on the socket and reused (a Map of sockets and a state object per hold
   * re-made the Map's tables every cycle: ~24% of the main thread's promoted bytes at 20k msg/s).
   * `held`: corked here; `armed`: its cycle is armed; `again`: held since; `carried`: once already.
   */
  private readonly key = Symbol('streamgate.hold')
  private held = 0
  /** Sockets held since the last arm, and the armed cycles not yet released (oldest first). */
  private current: net.Socket[] = []
  private readonly cycles: net.Socket[][] = []
  private armed = false

  private state (s: net.Socket): HoldState {
    const o = s as net.Socket & Record<symbol, HoldState | undefined>
    return o[this.key] ??= { held: false, armed: false, again: false, carried: false }
  }

  hold (conn: unknown): void {
    if (!(conn instanceof net.Socket) || conn.destroyed) return
    const st = this.state(conn)
    if (st.held) {
      if (st.armed) st.again = true
      return
    }
    conn.cork()
    st.held = true
    st.armed = st.again = st.carried = false
    this.held++
    this.enlist(conn)
  }

  private enlist (s: net.Socket): void {
    this.current.push(s)
    if (!this.armed) {
      this.armed = true
      process.nextTick(this.arm)
    }
  }

  private readonly arm = (): void => {
    const batch = this.current
    this.current = []
    this.armed = false
    for (const s of batch) {
      const st = this.state(s)
      if (st.held) st.armed = true
    }
    this.cycles.push(batch)
    setImmediate(this.release)
  }

  /** Releases the oldest armed cycle (immediates run in the order the cycles were armed). */
  private readonly release = (): void => {
    const batch = this.cycles.shift()
    if (batch === undefined) return // released by releaseAll
    for (const s of batch) {
      const st = this.state(s)
      if (!st.held) continue // released by releaseAll
      if (st.again && !st.carried && !s.destroyed && s.writableLength < CARRY_BYTES) {
        st.armed = false
        st.again = false
        st.carried = true
        this.enlist(s)
        continue
      }
      this.unhold(s, st)
    }
  }

  private unhold (s: net.Socket, st: HoldState): void {
    st.held = false
    this.held--
    s.uncork()
  }

  /** Uncorks every socket held now, whatever its cycle (shutdown). */
  releaseAll (): void {
    for (const batch of [this.current, ...this.cycles.splice(0)]) {
      for (const s of batch) {
        const st = this.state(s)
        if (st.held) this.unhold(s, st)
      }
    }
    this.current = []
  }

  /** Sockets corked now (tests). */
  get holding (): number { return this.held }
}

interface HoldState { held: boolean, armed: boolean, again: boolean, carried: boolean }

/** Bytes waiting in a held socket beyond which it is not carried into another cycle. */
const CARRY_BYTES = 64 * 1024
