// aedes-persistence-redis ships no types: the part streamgate uses.
declare module 'aedes-persistence-redis' {
  import type { Redis, RedisOptions } from 'ioredis'
  /** Aedes' persistence (the callback wrapper Aedes 1.x drives through promises and streams). */
  interface RedisPersistence {
    /** Without a callback: a promise. (With one it waits for a `ready` Aedes 1.x never triggers.) */
    destroy (): Promise<void>
  }
  function aedesPersistenceRedis (opts?: RedisOptions & { conn?: Redis, maxSessionDelivery?: number }): RedisPersistence
  export default aedesPersistenceRedis
}
