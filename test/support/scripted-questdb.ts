// A scripted HTTP endpoint that answers ILP `/write` the way QuestDB documents it (204; 400 with its
// JSON error body; 500; a hang; a commit answered too late; a refused connection when stopped), and
// records what it accepted.
import http from 'node:http'
import type net from 'node:net'

export type Mode = 'ok' | 'error500' | 'hang' | 'late' | 'reject-marked'

export interface IlpRow { table: string, seq: number, idx: number, line: string }

export class ScriptedQuestdb {
  mode: Mode = 'ok'
  /** Lines containing this are refused with 400 in 'reject-marked' mode. */
  marker = 'REFUSE_ME'
  /** 'late' mode: the rows are committed at once, the 204 is sent this much later (past the client's timeout). */
  lateMs = 1000
  readonly accepted: IlpRow[] = []
  requests = 0
  private server: http.Server | null = null
  private readonly hung: http.ServerResponse[] = []
  port = 0

  async start (port = 0): Promise<void> {
    this.server = http.createServer((req, res) => {
      let body = ''
      req.setEncoding('utf8')
      req.on('data', (d: string) => { body += d })
      req.on('end', () => this.answer(req, res, body))
    })
    await new Promise<void>((resolve) => this.server!.listen(port, '127.0.0.1', () => resolve()))
    this.port = (this.server.address() as net.AddressInfo).port
  }

  get ilp (): string {
    return `http::addr=127.0.0.1:${this.port};protocol_version=1;request_timeout=2000;retry_timeout=500`
  }

  private answer (req: http.IncomingMessage, res: http.ServerResponse, body: string): void {
    this.requests++
    if (req.method !== 'POST' || !(req.url ?? '').startsWith('/write')) {
      res.writeHead(404, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'invalid', message: 'not found' }))
      return
    }
    switch (this.mode) {
      case 'hang':
        this.hung.push(res)
        return
      case 'error500':
        res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ code: 'internal error', message: 'commit failed', errorId: 'x-1' }))
        return
      case 'reject-marked': {
        const lines = body.split('\n').filter((l) => l.length > 0)
        const bad = lines.findIndex((l) => l.includes(this.marker))
        if (bad >= 0) {
          res.writeHead(400, { 'content-type': 'application/json' }).end(JSON.stringify({
            code: 'invalid',
            message: `failed to parse line protocol:errors encountered on line(s):\nerror in line ${bad + 1}: table: t, column: note; cast error from protocol type: STRING to column type: DOUBLE`,
            line: bad + 1,
            errorId: 'x-2'
          }))
          return
        }
        break
      }
      case 'ok':
        break
    }
    this.commit(body)
    if (this.mode === 'late') {
      const t = setTimeout(() => { if (!res.destroyed) res.writeHead(204).end() }, this.lateMs)
      res.on('close', () => clearTimeout(t))
      return
    }
    res.writeHead(204).end()
  }

  /** One request is one transaction: records all its rows. */
  private commit (body: string): void {
    for (const line of body.split('\n')) {
      if (line.length === 0) continue
      const table = line.slice(0, line.indexOf(','))
      const seq = Number(/_seq=(\d+)i/.exec(line)?.[1])
      const idx = Number(/_idx=(\d+)i/.exec(line)?.[1])
      this.accepted.push({ table, seq, idx, line })
    }
  }

  /** Distinct (table, seq, idx) keys accepted: what DEDUP UPSERT KEYS leaves in the table. */
  keys (): Set<string> {
    return new Set(this.accepted.map((r) => `${r.table}/${r.seq}/${r.idx}`))
  }

  releaseHung (): void {
    for (const r of this.hung.splice(0)) r.destroy()
  }

  async stop (): Promise<void> {
    this.releaseHung()
    const s = this.server
    this.server = null
    if (s === null) return
    s.closeAllConnections()
    await new Promise<void>((resolve) => s.close(() => resolve()))
  }
}
