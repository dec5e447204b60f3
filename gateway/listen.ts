// Binding listeners. A port the operator set explicitly must be had or the start fails; a default port
// that is taken (e.g. 1883 by a local Mosquitto) falls back to the next free ones, loudly, the way dev
// servers do, so `npm start` works on a machine that already runs a broker.
import type net from 'node:net'

const FALLBACK_TRIES = 10

export interface ListenLog { warn: (obj: object, msg: string) => void }

function tryListen (server: net.Server, port: number, host: string): Promise<net.AddressInfo> {
  return new Promise((resolve, reject) => {
    const onError = (err: Error): void => reject(err)
    server.once('error', onError)
    server.listen(port, host, () => {
      server.off('error', onError)
      resolve(server.address() as net.AddressInfo)
    })
  })
}

export async function listen (server: net.Server, name: string, port: number, host: string, explicit: boolean, log: ListenLog): Promise<net.AddressInfo> {
  try {
    return await tryListen(server, port, host)
  } catch (err) {
    if (explicit || port === 0 || (err as NodeJS.ErrnoException).code !== 'EADDRINUSE') {
      throw new Error(`${name}: cannot listen on ${host}:${port}: ${(err as Error).message}`, { cause: err })
    }
  }
  for (let p = port + 1; p <= Math.min(65535, port + FALLBACK_TRIES); p++) {
    try {
      const addr = await tryListen(server, p, host)
      log.warn({ listener: name, wanted: port, port: addr.port }, `${name}: default port ${port} is in use; listening on ${addr.port} instead (set the port variable to choose)`)
      return addr
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code !== 'EADDRINUSE') throw err
    }
  }
  const addr = await tryListen(server, 0, host)
  log.warn({ listener: name, wanted: port, port: addr.port }, `${name}: default port ${port} is in use; listening on ${addr.port} instead (set the port variable to choose)`)
  return addr
}
