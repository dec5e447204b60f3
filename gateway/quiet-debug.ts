// mqtt-packet (Aedes' codec) calls `debug()` several times per packet. With its namespaces disabled each
// call still allocates a rest-arguments array and runs the `enabled` getter: ~2.5 µs a message on the
// benchmark machine (bench/profile-summary.ts). Namespaces disabled at start get a no-op instead;
// `DEBUG=mqtt-packet:*` still works, read once at start as the debug package does.
// Imported for its side effect before Aedes loads its codec.
import { createRequire } from 'node:module'

type Debug = ((...args: unknown[]) => void) & { enabled: boolean, namespace: string }
type CreateDebug = ((namespace: string) => Debug) & Record<string, unknown>

const fromAedes = createRequire(createRequire(import.meta.url).resolve('aedes'))
const fromCodec = createRequire(fromAedes.resolve('mqtt-packet'))
const path = fromCodec.resolve('debug')
const createDebug = fromCodec('debug') as CreateDebug
const entry = fromCodec.cache[path]
if (entry !== undefined) {
  entry.exports = Object.assign((namespace: string): Debug => {
    const d = createDebug(namespace)
    return d.enabled ? d : Object.assign(() => undefined, { enabled: false, namespace })
  }, createDebug)
}
