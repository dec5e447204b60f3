// Opens `count` authenticated MQTT connections to 127.0.0.1:`port` that then stay idle, from a process
// of its own (a test process holding both ends of 10,000 connections passes the file limit of these
// machines, 20,000, which cannot be raised here). Prints "ready <n>" once every CONNACK 0 came (or
// "error <message>"), then holds the connections until it is killed.
import type net from 'node:net'
import { idleConnection } from './mqtt-raw.js'

const [port, username, password, count] = process.argv.slice(2).map((a, i) => (i === 0 || i === 3 ? Number(a) : a)) as [number, string, string, number]
const sockets: net.Socket[] = []

try {
  for (let i = 0; i < count; i += 100) {
    sockets.push(...await Promise.all(Array.from({ length: Math.min(100, count - i) }, (_, k) => idleConnection(port, username, password, `idle-${process.pid}-${i + k}`))))
  }
  process.stdout.write(`ready ${sockets.length}\n`)
} catch (err) {
  process.stdout.write(`error ${(err as Error).message}\n`)
  process.exit(1)
}
setInterval(() => undefined, 60_000)
