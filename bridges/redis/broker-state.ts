// Shared MQTT state for several gateway nodes (STREAMGATE_REDIS_URL): Aedes' persistence (sessions,
// subscriptions, QoS 1 messages queued for offline persistent sessions) in Redis
// through aedes-persistence-redis, and cross-node fan-out through mqemitter-redis (Redis pub/sub: a
// message published on one node reaches the subscribers of every node, once).
import { Redis } from 'ioredis'
import aedesPersistenceRedis from 'aedes-persistence-redis'
import MQEmitterRedis from 'mqemitter-redis'

/** Aedes' `mq` and `persistence` options, and how to close them. */
export interface BrokerState {
  readonly mq: unknown
  readonly persistence: unknown
  /** Closes both; idempotent (Aedes' own close ends up here too). */
  close (): Promise<void>
}

/** How long closing may wait for Redis (down, or not answering) before the connections are dropped. */
const CLOSE_TIMEOUT_MS = 3000

export function redisBrokerState (url: string, log?: { warn: (obj: object, msg: string) => void }): BrokerState {
  const conn = new Redis(url)
  const persistence = aedesPersistenceRedis({ conn })
  const subConn = new Redis(url)
  const pubConn = new Redis(url)
  const mq = MQEmitterRedis({ subConn, pubConn })
  // Redis going away is logged (at most every 10 s), never thrown: mqemitter-redis re-emits its
  // connections' errors on `state`, an emitter whose unheard 'error' would end the process. ioredis
  // reconnects by itself; commands wait in its queue meanwhile.
  let lastLogged = 0
  const onError = (err: Error): void => {
    const t = Date.now()
    if (t - lastLogged < 10_000) return
    lastLogged = t
    log?.warn({ err: err.message }, 'Redis (shared MQTT state) unreachable; retrying')
  }
  for (const c of [conn, subConn, pubConn]) c.on('error', onError)
  ;(mq as unknown as { state: { on: (ev: 'error', fn: (err: Error) => void) => void } }).state.on('error', onError)
  const closeMq = mq.close.bind(mq)
  let closing: Promise<void> | null = null
  // The persistence unsubscribes from the emitter when destroyed, so it must go first: Aedes closes
  // only the emitter (at the end of its close), and this is where both are closed, in that order.
  const close = (): Promise<void> => {
    closing ??= new Promise<void>((resolve) => {
      let dropped = false
      const timer = setTimeout(() => {
        // Redis does not answer: drop the connections (a quit queued behind unsent commands never ends).
        dropped = true
        for (const c of [conn, subConn, pubConn]) c.disconnect()
        resolve()
      }, CLOSE_TIMEOUT_MS)
      // destroy() without a callback: with one it waits for a `ready` event Aedes 1.x never causes.
      persistence.destroy().catch(() => undefined)
        .then(() => dropped ? undefined : new Promise<void>((done) => closeMq(() => done())))
        .then(() => { clearTimeout(timer); resolve() }, () => undefined)
    })
    return closing
  }
  mq.close = (cb?: () => void) => {
    close().then(() => cb?.(), () => cb?.())
    return mq
  }
  return { mq, persistence, close }
}
