// TLS for the listeners: options read from the STREAMGATE_TLS_* files (again on SIGHUP: a server's
// secure context is replaced for new connections, open ones keep theirs), and the identity a verified
// client certificate gives an MQTT client: its subject CN names the principal.
import { readFileSync } from 'node:fs'
import tls from 'node:tls'
import type { Config } from '../config/index.js'

type TlsConfig = NonNullable<Config['tls']>

/** The secure context options from the files, as they are now. */
export function secureContextOptions (config: TlsConfig): tls.SecureContextOptions {
  return {
    cert: readFileSync(config.cert),
    key: readFileSync(config.key),
    ...(config.ca !== undefined ? { ca: readFileSync(config.ca) } : {})
  }
}

/** Options for an MQTT listener (MQTTS, WSS): client certificates asked for as STREAMGATE_TLS_CLIENT_AUTH says. */
export function mqttTlsOptions (config: TlsConfig): tls.TlsOptions {
  return {
    ...secureContextOptions(config),
    requestCert: config.clientAuth !== 'none',
    // `require`: a client without a certificate the CA signed fails the handshake.
    rejectUnauthorized: config.clientAuth === 'require'
  }
}

export interface CertificateIdentity {
  /** The subject's common name: the principal id. */
  readonly cn: string
  /** When the certificate expires (ms since the epoch): the session ends then. */
  readonly notAfter: number
}

/** The verified client certificate of a connection (MQTT over TLS, or over WSS through its request), or null. */
export function certificateIdentity (conn: unknown, req: unknown): CertificateIdentity | null {
  const socket = conn instanceof tls.TLSSocket
    ? conn
    : ((req as { socket?: unknown } | undefined)?.socket instanceof tls.TLSSocket ? (req as { socket: tls.TLSSocket }).socket : null)
  if (socket === null || !socket.authorized) return null
  const cert = socket.getPeerCertificate()
  const cn = cert?.subject?.CN
  if (typeof cn !== 'string' || cn === '') return null
  return { cn, notAfter: Date.parse(cert.valid_to) }
}

/** Replaces the secure context of every server (SIGHUP); throws, changing nothing, when a file is bad. */
export function reloadSecureContexts (config: TlsConfig, servers: readonly tls.Server[]): void {
  const options = secureContextOptions(config)
  tls.createSecureContext(options) // a bad certificate or key throws here, before any server changes
  for (const s of servers) s.setSecureContext(options)
}
