// A loopback TCP proxy a test can cut and restore, to make a real server (QuestDB) unreachable for a
// while without stopping it: `down()` drops every connection and refuses new ones; `up()` restores.
import net from 'node:net'

export class TcpProxy {
  private server: net.Server | null = null
  private readonly sockets = new Set<net.Socket>()
  port = 0

  constructor (private readonly target: { host: string, port: number }) {}

  async up (port = this.port): Promise<void> {
    if (this.server !== null) return
    this.server = net.createServer((client) => {
      const upstream = net.connect(this.target.port, this.target.host)
      for (const s of [client, upstream]) {
        this.sockets.add(s)
        s.on('close', () => this.sockets.delete(s))
        s.on('error', () => { client.destroy(); upstream.destroy() })
      }
      client.pipe(upstream).pipe(client)
    })
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject)
      this.server!.listen(port, '127.0.0.1', () => resolve())
    })
    this.port = (this.server.address() as net.AddressInfo).port
  }

  async down (): Promise<void> {
    const s = this.server
    this.server = null
    for (const sock of this.sockets) sock.destroy()
    if (s !== null) await new Promise<void>((resolve) => s.close(() => resolve()))
  }
}

/** "host:port", "http://host:port" or "postgres://user:pw@host:port/db" → host and port. */
export function hostPort (s: string, defaultPort: number): { host: string, port: number } {
  const url = new URL(s.includes('://') ? s : `tcp://${s}`)
  return { host: url.hostname, port: url.port === '' ? defaultPort : Number(url.port) }
}
