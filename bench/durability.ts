// What "ack means durable" costs on each candidate for the journal (`npm run bench -- --durability`):
// streamgate's local journal (write + fdatasync, group commit) against RabbitMQ queues with publisher
// confirms as a journal that outlives the node: a classic durable queue, a quorum queue and a stream.
// Each gets the same load: ~100-byte entries, 100 in flight at a time (as MQTT publishers keep them),
// for a fixed count; it reports entries/s and the append→acknowledgement latency. RabbitMQ runs as a
// single node here, so its figures are a floor for what a three-node cluster (replication over the
// network, a majority to confirm) would cost. Needs the machine's RabbitMQ.
import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import amqplib from 'amqplib'
import { Journal } from '../gateway/journal.js'
import { now, pct } from './common.js'

const argv = process.argv.slice(2)
const quick = argv.includes('--quick')
const N = quick ? 10_000 : 50_000
const WINDOW = 100
const AMQP = process.env.BENCH_AMQP_URL ?? 'amqp://guest:guest@127.0.0.1:5672'
const PAYLOAD = Buffer.from('{"site":"site-0001","temp":21.53,"hum":48.27,"pressure":1013.25,"t":0}')

interface Figure { name: string, rate: number, p50: number, p99: number }

/** Runs `append` N times with at most WINDOW unacknowledged; `append` resolves on the acknowledgement. */
async function drive (name: string, append: (i: number) => Promise<void>): Promise<Figure> {
  const lat: number[] = []
  const t0 = now()
  let next = 0
  await Promise.all(Array.from({ length: WINDOW }, async () => {
    while (next < N) {
      const i = next++
      const s = now()
      await append(i)
      lat.push(now() - s)
    }
  }))
  const secs = (now() - t0) / 1000
  lat.sort((a, b) => a - b)
  return { name, rate: Math.round(N / secs), p50: pct(lat, 0.5), p99: pct(lat, 0.99) }
}

async function journal (): Promise<Figure> {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-dur-'))
  const { journal: j } = await Journal.open({ dir, maxBytes: 1 << 30, segmentBytes: 64 << 20 })
  try {
    return await drive('local journal (write + fdatasync, group commit)', () => new Promise<void>((resolve, reject) => {
      j.append({ arrivalUs: Date.now() * 1000, dataset: 'bench', version: 1, device: 'd', principal: 'p', payload: PAYLOAD }, (err) => err === null ? resolve() : reject(err))
    }))
  } finally {
    await j.close()
    fs.rmSync(dir, { recursive: true, force: true })
  }
}

async function rabbit (type: 'classic' | 'quorum' | 'stream'): Promise<Figure> {
  const conn = await amqplib.connect(AMQP)
  const queue = `sg-durability-${type}-${process.pid}`
  try {
    const setup = await conn.createChannel()
    await setup.assertQueue(queue, { durable: true, arguments: { 'x-queue-type': type } })
    await setup.close()
    const ch = await conn.createConfirmChannel()
    const fig = await drive(`RabbitMQ ${type} queue (persistent, publisher confirms)`, (i) => new Promise<void>((resolve, reject) => {
      ch.sendToQueue(queue, PAYLOAD, { persistent: true, messageId: String(i) }, (err) => err == null ? resolve() : reject(err))
    }))
    await ch.close()
    return fig
  } finally {
    const ch = await conn.createChannel()
    await ch.deleteQueue(queue).catch(() => undefined)
    await conn.close().catch(() => undefined)
  }
}

const figures: Figure[] = [await journal(), await rabbit('classic'), await rabbit('quorum'), await rabbit('stream')]
const lines = [
  `Command: \`npm run bench -- --durability${quick ? ' --quick' : ''}\` on ${os.cpus().length} cores, Node ${process.version}, ${new Date().toISOString()}: ${N} entries of ${PAYLOAD.length} B, ${WINDOW} in flight; RabbitMQ is one local node.`,
  '',
  '| journal | entries/s | append→ack ms p50 | p99 |',
  '| --- | --- | --- | --- |',
  ...figures.map((f) => `| ${f.name} | ${f.rate} | ${f.p50.toFixed(2)} | ${f.p99.toFixed(2)} |`)
]
process.stdout.write(lines.join('\n') + '\n')
