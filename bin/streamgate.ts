#!/usr/bin/env node
// streamgate: start the gateway from environment variables (and STREAMGATE_CONFIG), stop on SIGTERM/SIGINT.
import { setFlagsFromString } from 'node:v8'
import { ConfigError, loadConfig, unknownVariables } from '../config/index.js'
import { startStreamgate } from './app.js'

// V8's allocation-site pretenuring saw a QoS 1 message's objects outlive a young-generation GC (they
// wait for an fdatasync) and allocated them in the old generation from then on: ~6 MB/s at 20k msg/s,
// a mark-compact of the main heap every few seconds (5-10 ms, the event loop stopped) and a p99
// latency of 16-26 ms; without it 5.5-6.8 ms (BENCHMARKS.md, 2026-11-30). The flag is only read when
// a GC decides, so setting it here, before any load, takes effect (measured: the same figures as
// the command-line flag). It applies to the sink thread too (V8's flags are per process).
setFlagsFromString('--no-allocation-site-pretenuring')

async function main (): Promise<void> {
  let config
  try {
    config = loadConfig(process.env)
  } catch (err) {
    if (err instanceof ConfigError) {
      process.stderr.write(`streamgate: ${err.message}\n`)
      process.exit(2)
    }
    throw err
  }
  for (const { name, suggestion } of unknownVariables(process.env)) {
    process.stderr.write(`streamgate: warning: ${name} is not a streamgate setting and is ignored${suggestion !== null ? ` (did you mean ${suggestion}?)` : ''}\n`)
  }
  const sg = await startStreamgate(config)
  let stopping = false
  const stop = (signal: string): void => {
    if (stopping) {
      process.stderr.write(`streamgate: second ${signal}, exiting now\n`)
      process.exit(1)
    }
    stopping = true
    sg.log.info({ signal, timeoutMs: config.limits.shutdownTimeoutMs }, 'shutting down')
    // Closing drains the sinks for up to STREAMGATE_SHUTDOWN_TIMEOUT_MS; past that and a margin, something hangs.
    setTimeout(() => {
      process.stderr.write('streamgate: shutdown did not finish in time, exiting\n')
      process.exit(1)
    }, config.limits.shutdownTimeoutMs + 15_000).unref()
    sg.close().then(() => process.exit(0), (err: unknown) => {
      sg.log.error({ err: String(err) }, 'shutdown failed')
      process.exit(1)
    })
  }
  // SIGHUP: new certificates for new connections; open connections keep theirs.
  process.on('SIGHUP', () => {
    try {
      sg.reloadTls()
    } catch (err) {
      sg.log.error({ err: (err as Error).message }, 'TLS reload failed; the certificates in use stay')
    }
  })
  process.on('SIGTERM', () => stop('SIGTERM'))
  process.on('SIGINT', () => stop('SIGINT'))
  // Only now say where it listens: whoever reads this line may stop it with a signal right away, and
  // a SIGTERM before the handler above exists would kill the process without a drain.
  const a = sg.addresses
  // One write: whoever waits for the listening line gets the admin key with it.
  process.stdout.write(`streamgate listening: mqtt ${config.bind}:${a.mqtt.port}, mqtt-over-websocket ws://${config.bind}:${a.ws.port}/mqtt, http http://${config.bind}:${a.http.port}` +
    (a.mqtts !== null ? `, mqtts :${a.mqtts.port}` : '') + (a.wss !== null ? `, wss :${a.wss.port}` : '') + (a.https !== null ? `, https :${a.https.port}` : '') + '\n' +
    (sg.generatedAdminKey === null
      ? ''
      : '\n  First start: generated the admin key (principal "admin"). It is shown only this once; only its hash is stored.\n' +
        `  STREAMGATE_ADMIN_KEY=${sg.generatedAdminKey}\n\n`))
}

main().catch((err: unknown) => {
  process.stderr.write(`streamgate: failed to start: ${err instanceof Error ? err.stack ?? err.message : String(err)}\n`)
  process.exit(1)
})
