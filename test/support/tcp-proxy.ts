// A loopback TCP proxy a test can cut, stall and restore, to make a real server (QuestDB, RabbitMQ)
// unreachable or slow for a while without stopping it: `down()` drops every connection and refuses
// new ones; `stall()` keeps connections open but holds every byte in both directions (a hung network
// or server) until `resume()` delivers them; `up()` restores after `down()`. `cut()` is `down()` that
// keeps the port (new connections are closed at once; `restore()` ends it): with `down()` and
// `up(port)`, another process may take the port meanwhile (EADDRINUSE).
import net from 'node:net'

export class TcpProxy {
  private server: net.Server | null = null
  private readonly sockets = new Set<net.Socket>()
  private stalled = false
  private refusing = false
  private readonly held: (() => void)[] = []
  port = 0

  constructor (private readonly target: { host: string, port: number }) {}

  async up (port = this.port): Promise<void> {
    if (this.server !== null) return
    this.server = net.createServer((client) => {
      if (this.refusing) {
        client.on('error', () => undefined)
        client.destroy()
        return
      }
      const upstream = net.connect(this.target.port, this.target.host)
      for (const s of [client, upstream]) {
        this.sockets.add(s)
        s.on('close', () => this.sockets.delete(s))
        s.on('error', () => { client.destroy(); upstream.destroy() })
      }
      this.forward(client, upstream)
      this.forward(upstream, client)
    })
    await new Promise<void>((resolve, reject) => {
      this.server!.once('error', reject)
      this.server!.listen(port, '127.0.0.1', () => resolve())
    })
    this.port = (this.server.address() as net.AddressInfo).port
  }

  private forward (from: net.Socket, to: net.Socket): void {
    from.on('data', (chunk: Buffer) => {
      const send = (): void => { if (!to.destroyed && !to.write(chunk)) from.pause() }
      if (this.stalled) this.held.push(send)
      else send()
    })
    to.on('drain', () => from.resume())
    from.on('end', () => { if (this.stalled) this.held.push(() => to.end()); else to.end() })
  }

  stall (): void {
    this.stalled = true
  }

  resume (): void {
    this.stalled = false
    for (const send of this.held.splice(0)) send()
  }

  /** Drops every connection and closes new ones at once, keeping the port, until restore(). */
  cut (): void {
    this.refusing = true
    this.held.length = 0
    this.stalled = false
    for (const sock of this.sockets) sock.destroy()
  }

  restore (): void {
    this.refusing = false
  }

  async down (): Promise<void> {
    const s = this.server
    this.server = null
    this.held.length = 0
    this.stalled = false
    for (const sock of this.sockets) sock.destroy()
    if (s !== null) await new Promise<void>((resolve) => s.close(() => resolve()))
  }
}

/** "host:port", "http://host:port" or "postgres://user:pw@host:port/db" → host and port. */
export function hostPort (s: string, defaultPort: number): { host: string, port: number } {
  const url = new URL(s.includes('://') ? s : `tcp://${s}`)
  return { host: url.hostname, port: url.port === '' ? defaultPort : Number(url.port) }
}
