// TLS: MQTTS, WSS and HTTPS listeners; client certificates (STREAMGATE_TLS_CLIENT_AUTH) tried with the
// real mosquitto_pub and mosquitto_sub; certificates reloaded on SIGHUP without dropping connections.
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import https from 'node:https'
import path from 'node:path'
import tls from 'node:tls'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, storedCount, type TestGateway, tmpDataDir, uniqueId, waitUntil } from '../helpers.js'
import { issue, makeCa, type Pem } from '../support/certs.js'
import { killAll, startChild, stopChild } from '../support/child.js'

describe('TLS listeners', () => {
  it('serves MQTT over TLS and over secure WebSocket when a certificate and key are given', async () => {
    const dir = tmpDataDir()
    const authority = makeCa(dir, 'ca')
    const server = issue(dir, authority, 'server', 'localhost', 'server')
    const gw = await startTestGateway({ STREAMGATE_TLS_CERT: server.cert, STREAMGATE_TLS_KEY: server.key })
    try {
      const ca = fs.readFileSync(authority.cert)
      const ds = uniqueId('tls')
      await createDataset(gw, ds)
      const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
      await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'subscribe'] }])
      const mqtts = await connect(`mqtts://127.0.0.1:${gw.sg.addresses.mqtts!.port}`, dev.id, dev.key, { ca, rejectUnauthorized: true })
      const wss = await connect(`wss://127.0.0.1:${gw.sg.addresses.wss!.port}/mqtt`, dev.id, dev.key, { ca, rejectUnauthorized: true })
      let got = 0
      wss.on('message', () => { got++ })
      await wss.subscribeAsync(`datasets/${ds}/#`, { qos: 1 })
      await mqtts.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: 1 }), { qos: 1 })
      await waitUntil(() => got === 1)
      await mqtts.endAsync()
      await wss.endAsync()
      expect(got).toBe(1)
    } finally {
      await gw.stop()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

interface Run { code: number | null, stdout: string, stderr: string }
/** Runs a mosquitto client to its end (bounded by `-W` and a timeout). */
function mosquitto (tool: 'mosquitto_pub' | 'mosquitto_sub', args: string[]): Promise<Run> {
  return new Promise((resolve) => {
    execFile(tool, args, { timeout: 20_000 }, (err, stdout, stderr) => {
      resolve({ code: err === null ? 0 : typeof err.code === 'number' ? err.code : -1, stdout, stderr })
    })
  })
}

/** The subject CN of the certificate a TLS listener presents now. */
function presentedCn (port: number, ca: string): Promise<string> {
  return new Promise((resolve, reject) => {
    const s = tls.connect({ port, host: '127.0.0.1', ca: fs.readFileSync(ca) }, () => {
      const cn = s.getPeerCertificate().subject.CN
      s.destroy()
      resolve(Array.isArray(cn) ? cn.join(',') : (cn ?? ''))
    })
    s.on('error', reject)
  })
}

describe('client certificates', () => {
  const dir = tmpDataDir()
  let ca: Pem
  let otherCa: Pem
  let server: Pem
  let gw: TestGateway
  let ds: string
  let dev: { id: string, key: string }
  let devCert: Pem
  let strangerCert: Pem
  let wrongCaCert: Pem

  beforeAll(async () => {
    ca = makeCa(dir, 'ca')
    otherCa = makeCa(dir, 'other-ca')
    server = issue(dir, ca, 'server', 'localhost', 'server')
    gw = await startTestGateway({ STREAMGATE_TLS_CERT: server.cert, STREAMGATE_TLS_KEY: server.key, STREAMGATE_TLS_CA: ca.cert, STREAMGATE_TLS_CLIENT_AUTH: 'require' })
    ds = uniqueId('cert')
    await createDataset(gw, ds, { fields: { temp: 'double' } })
    dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish', 'subscribe'] }])
    devCert = issue(dir, ca, 'dev', dev.id, 'client')
    strangerCert = issue(dir, ca, 'stranger', 'nobody-we-know', 'client')
    wrongCaCert = issue(dir, otherCa, 'wrong', dev.id, 'client')
  })
  afterAll(async () => {
    await gw?.stop()
    fs.rmSync(dir, { recursive: true, force: true })
  })

  const base = (): string[] => ['-h', '127.0.0.1', '-p', String(gw.sg.addresses.mqtts!.port), '--cafile', ca.cert]

  it('lets mosquitto_pub and mosquitto_sub in with a certificate whose CN is the principal, no password', async () => {
    const topic = `datasets/${ds}/${dev.id}`
    const sub = mosquitto('mosquitto_sub', [...base(), '--cert', devCert.cert, '--key', devCert.key, '-t', `datasets/${ds}/#`, '-q', '1', '-C', '1', '-W', '15', '-v', '-i', uniqueId('sub')])
    await waitUntil(() => gw.sg.broker.sessions().some((x) => x.principal === dev.id), 10_000, 'the subscriber to connect')
    // its session is the certificate's principal, without a key
    expect(gw.sg.broker.sessions().find((x) => x.principal === dev.id)?.keyId).toBeNull()
    await new Promise((resolve) => setTimeout(resolve, 300)) // and subscribe
    const pub = await mosquitto('mosquitto_pub', [...base(), '--cert', devCert.cert, '--key', devCert.key, '-t', topic, '-q', '1', '-m', '{"temp": 21.5}', '-i', uniqueId('pub')])
    expect(pub).toMatchObject({ code: 0 })
    const got = await sub
    expect(got.code).toBe(0)
    expect(got.stdout.trim()).toBe(`${topic} {"temp": 21.5}`)
  })

  it('refuses a client without a certificate, with one from another CA, and one trusting another CA', async () => {
    const topic = `datasets/${ds}/${dev.id}`
    const noCert = await mosquitto('mosquitto_pub', [...base(), '-u', dev.id, '-P', dev.key, '-t', topic, '-q', '1', '-m', '{"temp": 1}'])
    expect(noCert.code).not.toBe(0)
    const wrongCa = await mosquitto('mosquitto_pub', [...base(), '--cert', wrongCaCert.cert, '--key', wrongCaCert.key, '-t', topic, '-q', '1', '-m', '{"temp": 1}'])
    expect(wrongCa.code).not.toBe(0)
    const trustsOther = await mosquitto('mosquitto_pub', ['-h', '127.0.0.1', '-p', String(gw.sg.addresses.mqtts!.port), '--cafile', otherCa.cert, '--cert', devCert.cert, '--key', devCert.key, '-t', topic, '-q', '1', '-m', '{"temp": 1}'])
    expect(trustsOther.code).not.toBe(0)
    // Only the earlier test's record: the store may trail the journal, so let it catch up first.
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(1)
  })

  it('refuses a valid certificate naming no principal, and a username other than the CN', async () => {
    const topic = `datasets/${ds}/${dev.id}`
    const stranger = await mosquitto('mosquitto_pub', [...base(), '--cert', strangerCert.cert, '--key', strangerCert.key, '-t', topic, '-q', '1', '-m', '{"temp": 1}'])
    expect(stranger.code).not.toBe(0)
    expect(stranger.stderr).toMatch(/not authori[sz]ed|bad user name or password/i)
    const other = await mosquitto('mosquitto_pub', [...base(), '--cert', devCert.cert, '--key', devCert.key, '-u', 'admin', '-t', topic, '-q', '1', '-m', '{"temp": 1}'])
    expect(other.code).not.toBe(0)
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq) // a publish wrongly taken would be stored by now
    expect(await storedCount(gw.sg, ds)).toBe(1)
  })

  it('serves the API over HTTPS', async () => {
    const status = await new Promise<number>((resolve, reject) => {
      https.get({ host: '127.0.0.1', port: gw.sg.addresses.https!.port, path: '/healthz', ca: fs.readFileSync(ca.cert) }, (res) => { res.resume(); resolve(res.statusCode ?? 0) }).on('error', reject)
    })
    expect(status).toBe(200)
  })
})

describe('optional client certificates', () => {
  it('takes either a certificate or a key', async () => {
    const dir = tmpDataDir()
    const ca = makeCa(dir, 'ca')
    const server = issue(dir, ca, 'server', 'localhost', 'server')
    const gw = await startTestGateway({ STREAMGATE_TLS_CERT: server.cert, STREAMGATE_TLS_KEY: server.key, STREAMGATE_TLS_CA: ca.cert, STREAMGATE_TLS_CLIENT_AUTH: 'optional' })
    try {
      const ds = uniqueId('opt')
      await createDataset(gw, ds, { fields: { temp: 'double' } })
      const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
      await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
      const cert = issue(dir, ca, 'dev', dev.id, 'client')
      const args = ['-h', '127.0.0.1', '-p', String(gw.sg.addresses.mqtts!.port), '--cafile', ca.cert, '-t', `datasets/${ds}/${dev.id}`, '-q', '1', '-m', '{"temp": 2}']
      expect((await mosquitto('mosquitto_pub', [...args, '-u', dev.id, '-P', dev.key])).code).toBe(0)
      expect((await mosquitto('mosquitto_pub', [...args, '--cert', cert.cert, '--key', cert.key])).code).toBe(0)
      expect((await mosquitto('mosquitto_pub', [...args])).code).not.toBe(0)
      await waitUntil(async () => (await storedCount(gw.sg, ds)) === 2, 5000, 'two records stored')
    } finally {
      await gw.stop()
      fs.rmSync(dir, { recursive: true, force: true })
    }
  })
})

describe('certificate reload on SIGHUP', () => {
  afterAll(killAll)

  it('presents the new certificate to new connections, keeps open ones, and keeps the old one when the new files are bad', async () => {
    const dir = tmpDataDir()
    const files = path.join(dir, 'tls')
    fs.mkdirSync(files)
    try {
      const ca = makeCa(files, 'ca')
      const first = issue(files, ca, 'first', 'first.localhost', 'server')
      const second = issue(files, ca, 'second', 'second.localhost', 'server')
      const cert = path.join(files, 'server.pem')
      const key = path.join(files, 'server.key')
      fs.copyFileSync(first.cert, cert)
      fs.copyFileSync(first.key, key)
      const child = await startChild(path.join(dir, 'data'), { STREAMGATE_TLS_CERT: cert, STREAMGATE_TLS_KEY: key })
      const port = Number(/mqtts :(\d+)/.exec(child.output())![1])
      // Every TLS listener: MQTTS, MQTT over secure WebSocket, the API over HTTPS.
      const tlsPorts = ['mqtts', 'wss', 'https'].map((l) => Number(new RegExp(`${l} :(\\d+)`).exec(child.output())![1]))
      const presented = async (): Promise<string[]> => Promise.all(tlsPorts.map((p) => presentedCn(p, ca.cert)))
      expect(await presented()).toEqual(['first.localhost', 'first.localhost', 'first.localhost'])
      const http = `http://127.0.0.1:${child.httpPort}`
      const ds = uniqueId('hup')
      await createDataset({ httpUrl: http }, ds, { fields: { temp: 'double' } })
      // An open connection, from before the reload.
      const open = await connect(`mqtts://127.0.0.1:${port}`, 'admin', ADMIN_KEY, { ca: fs.readFileSync(ca.cert) })
      fs.copyFileSync(second.cert, cert)
      fs.copyFileSync(second.key, key)
      child.proc.kill('SIGHUP')
      await waitUntil(async () => (await presented()).every((cn) => cn === 'second.localhost'), 5000, 'the new certificate on every TLS listener')
      await open.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ temp: 1 }), { qos: 1 })
      expect(open.connected).toBe(true)
      // A bad file: logged, the certificate in use stays, the process goes on.
      fs.writeFileSync(cert, 'not a certificate')
      child.proc.kill('SIGHUP')
      await waitUntil(() => child.output().includes('TLS reload failed'), 5000, 'the failed reload to be logged')
      expect(await presented()).toEqual(['second.localhost', 'second.localhost', 'second.localhost'])
      await open.publishAsync(`datasets/${ds}/d1`, JSON.stringify({ temp: 2 }), { qos: 1 })
      await open.endAsync()
      expect(await stopChild(child.proc, 'SIGTERM')).toBe(0)
    } finally {
      fs.rmSync(dir, { recursive: true, force: true })
    }
  }, 60_000)
})
