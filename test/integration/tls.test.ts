import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, tmpDataDir, uniqueId, waitUntil } from '../helpers.js'

describe('TLS listeners', () => {
  it('serves MQTT over TLS and over secure WebSocket when a certificate and key are given', async () => {
    const dir = tmpDataDir()
    const cert = path.join(dir, 'cert.pem')
    const key = path.join(dir, 'key.pem')
    execFileSync('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-days', '1',
      '-subj', '/CN=localhost', '-addext', 'subjectAltName=IP:127.0.0.1,DNS:localhost', '-keyout', key, '-out', cert], { stdio: 'ignore' })
    const gw = await startTestGateway({ STREAMGATE_TLS_CERT: cert, STREAMGATE_TLS_KEY: key, STREAMGATE_MQTTS_PORT: '0', STREAMGATE_WSS_PORT: '0' })
    try {
      const ca = fs.readFileSync(cert)
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
    }
  })
})
