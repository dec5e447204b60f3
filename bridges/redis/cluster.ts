// The nodes sharing a Redis (GET /v1/cluster): each node writes what it is doing into one Redis hash
// every second, and reads the others from it. An entry older than STALE_MS is a node that is gone
// (killed, or cut off from Redis) and is dropped from the answer and the hash.
import { Redis } from 'ioredis'
import type { NodeInfo } from '../../gateway/index.js'


const KEY = 'streamgate:nodes'
const EVERY_MS = 1000
const STALE_MS = 5000

export class ClusterRegistry {
  private readonly redis: Redis
  private timer: NodeJS.Timeout | null = null

  constructor (url: string, private readonly nodeId: string, private readonly self: () => Omit<NodeInfo, 'seenAt'>) {
    this.redis = new Redis(url, { maxRetriesPerRequest: 2 })
    this.redis.on('error', () => undefined) // reconnects by itself; a failed write only ages the entry
  }

  async start (): Promise<void> {
    await this.beat()
    this.timer = setInterval(() => { this.beat().catch(() => undefined) }, EVERY_MS)
    this.timer.unref()
  }

  private async beat (): Promise<void> {
    await this.redis.hset(KEY, this.nodeId, JSON.stringify({ ...this.self(), seenAt: new Date().toISOString() }))
  }

  /** Every live node, this one first (its entry as it is now, not as last written). */
  async nodes (): Promise<NodeInfo[]> {
    const all = await this.redis.hgetall(KEY)
    const now = Date.now()
    const others: NodeInfo[] = []
    const gone: string[] = []
    for (const [id, doc] of Object.entries(all)) {
      if (id === this.nodeId) continue
      const info = JSON.parse(doc) as NodeInfo
      if (now - Date.parse(info.seenAt) > STALE_MS) gone.push(id)
      else others.push(info)
    }
    if (gone.length > 0) await this.redis.hdel(KEY, ...gone)
    return [{ ...this.self(), seenAt: new Date().toISOString() }, ...others.sort((a, b) => a.id.localeCompare(b.id))]
  }

  /** Leaves the cluster: the entry goes at once (a killed node's goes when it is stale). */
  async close (): Promise<void> {
    if (this.timer !== null) clearInterval(this.timer)
    this.timer = null
    // Redis may not answer: give up after a moment (the entry then ages out) and drop the connection.
    const leave = this.redis.hdel(KEY, this.nodeId).then(() => this.redis.quit()).catch(() => undefined)
    await Promise.race([leave, new Promise((resolve) => setTimeout(resolve, 2000).unref())])
    this.redis.disconnect()
  }
}
