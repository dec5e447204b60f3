// Throwaway certificates for TLS tests, made with openssl: a CA, server certificates for 127.0.0.1 and
// localhost, and client certificates whose CN names a principal.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'

export interface Pem { readonly cert: string, readonly key: string }

function openssl (...args: string[]): void {
  execFileSync('openssl', args, { stdio: 'ignore', timeout: 30_000 })
}

const EC = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes']

export function makeCa (dir: string, name: string): Pem {
  const pem = { cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) }
  openssl('req', '-x509', ...EC, '-days', '2', '-subj', `/CN=${name}`, '-keyout', pem.key, '-out', pem.cert)
  return pem
}

/** A certificate for `cn` signed by `ca`: a server one (SAN 127.0.0.1, localhost) or a client one. */
export function issue (dir: string, ca: Pem, name: string, cn: string, kind: 'server' | 'client'): Pem {
  const pem = { cert: path.join(dir, `${name}.pem`), key: path.join(dir, `${name}.key`) }
  const csr = path.join(dir, `${name}.csr`)
  const ext = path.join(dir, `${name}.ext`)
  fs.writeFileSync(ext, kind === 'server' ? 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' : 'extendedKeyUsage=clientAuth\n')
  openssl('req', ...EC, '-subj', `/CN=${cn}`, '-keyout', pem.key, '-out', csr)
  openssl('x509', '-req', '-in', csr, '-CA', ca.cert, '-CAkey', ca.key, '-CAcreateserial', '-days', '1', '-extfile', ext, '-out', pem.cert)
  return pem
}
