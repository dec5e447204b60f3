// Who may call the API: API keys (Bearer or X-API-Key), tokens exchanged for a key, JWTs from a
// configured issuer (shared secret or JWKS), and what happens when a principal is disabled or deleted.
import http from 'node:http'
import type net from 'node:net'
import { exportJWK, generateKeyPair, SignJWT } from 'jose'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, closed, connect, connectRefused, createDataset, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId } from '../helpers.js'

const SECRET = 'an-external-issuer-shared-secret-0123456789'
const ISSUER = 'https://idp.example.test'

function unsigned (claims: Record<string, unknown>): string {
  const enc = (o: unknown): string => Buffer.from(JSON.stringify(o)).toString('base64url')
  return `${enc({ alg: 'none', typ: 'JWT' })}.${enc(claims)}.`
}

async function hs256 (claims: Record<string, unknown>, secret = SECRET, issuer = ISSUER, expires = '5m'): Promise<string> {
  return new SignJWT(claims).setProtectedHeader({ alg: 'HS256' }).setIssuer(issuer).setIssuedAt().setExpirationTime(expires).sign(new TextEncoder().encode(secret))
}

let gw: TestGateway
beforeAll(async () => { gw = await startTestGateway({ STREAMGATE_JWT_ISSUER: ISSUER, STREAMGATE_JWT_SECRET: SECRET }) })
afterAll(async () => { await gw?.stop() })

describe('API authentication', () => {
  it('takes an API key as Bearer or X-API-Key, and nothing else', async () => {
    expect((await api(gw.httpUrl, null, 'GET', '/v1/datasets', undefined, { 'x-api-key': ADMIN_KEY })).status).toBe(200)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/datasets')).status).toBe(200)
    const none = await api(gw.httpUrl, null, 'GET', '/v1/datasets')
    expect(none.status).toBe(401)
    expect(none.headers.get('www-authenticate')).toMatch(/^Bearer/)
    expect(none.body.type).toBe('https://streamgate.dev/problems/unauthenticated')
    expect((await api(gw.httpUrl, null, 'GET', `/v1/datasets?access_token=${ADMIN_KEY}`)).status).toBe(401)
    expect((await api(gw.httpUrl, null, 'GET', '/v1/datasets', undefined, { authorization: `Basic ${ADMIN_KEY}` })).status).toBe(401)
  })

  it('exchanges a key for a token that dies with the key', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const t = await api(gw.httpUrl, dev.key, 'POST', '/v1/auth/token')
    expect(t.status).toBe(201)
    expect(t.body).toMatchObject({ tokenType: 'Bearer', expiresIn: 900 })
    expect(t.headers.get('cache-control')).toBe('no-store')
    expect((await api(gw.httpUrl, t.body.token, 'GET', '/v1/datasets')).status).toBe(200)
    // A token cannot mint tokens; a revoked key's tokens stop working.
    expect((await api(gw.httpUrl, t.body.token, 'POST', '/v1/auth/token')).status).toBe(403)
    await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/principals/${dev.id}/keys/${dev.keyId}`)
    expect((await api(gw.httpUrl, t.body.token, 'GET', '/v1/datasets')).status).toBe(401)
    // A token signed with anything but the gateway's secret, or not signed at all, is refused.
    expect((await api(gw.httpUrl, await hs256({ sub: 'admin', key: 'key_bootstrap' }, 'x'.repeat(40), 'streamgate'), 'GET', '/v1/datasets')).status).toBe(401)
    expect((await api(gw.httpUrl, unsigned({ iss: 'streamgate', sub: 'admin', key: 'key_bootstrap', exp: Math.floor(Date.now() / 1000) + 60 }), 'GET', '/v1/datasets')).status).toBe(401)
  })

  it('maps a JWT from the configured issuer to the principal its claim names', async () => {
    const svc = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
    const ds = uniqueId('jwt')
    await createDataset(gw, ds)
    await setGrants(gw, ds, [{ principal: svc.id, actions: ['query'] }])
    const good = await hs256({ sub: svc.id })
    expect((await api(gw.httpUrl, good, 'GET', `/v1/datasets/${ds}`)).status).toBe(200)
    // Its grants, not more.
    expect((await api(gw.httpUrl, good, 'GET', '/v1/principals')).status).toBe(403)
    // Wrong issuer, wrong secret, expired, alg none, an unknown principal: 401.
    expect((await api(gw.httpUrl, await hs256({ sub: svc.id }, SECRET, 'https://evil.example'), 'GET', `/v1/datasets/${ds}`)).status).toBe(401)
    expect((await api(gw.httpUrl, await hs256({ sub: svc.id }, 'y'.repeat(40)), 'GET', `/v1/datasets/${ds}`)).status).toBe(401)
    expect((await api(gw.httpUrl, await hs256({ sub: svc.id }, SECRET, ISSUER, '-1m'), 'GET', `/v1/datasets/${ds}`)).status).toBe(401)
    expect((await api(gw.httpUrl, unsigned({ iss: ISSUER, sub: svc.id, exp: Math.floor(Date.now() / 1000) + 60 }), 'GET', `/v1/datasets/${ds}`)).status).toBe(401)
    expect((await api(gw.httpUrl, await hs256({ sub: 'nobody-here' }), 'GET', `/v1/datasets/${ds}`)).status).toBe(401)
    // Tokens from the external issuer are not exchanged for gateway tokens.
    expect((await api(gw.httpUrl, good, 'POST', '/v1/auth/token')).status).toBe(403)
  })

  it('verifies JWTs against the issuer\'s JWKS', async () => {
    const { publicKey, privateKey } = await generateKeyPair('RS256')
    const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'RS256', use: 'sig' }
    const jwks = http.createServer((_req, res) => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify({ keys: [jwk] })) })
    await new Promise<void>((resolve) => jwks.listen(0, '127.0.0.1', () => resolve()))
    const url = `http://127.0.0.1:${(jwks.address() as net.AddressInfo).port}/jwks.json`
    const other = await startTestGateway({ STREAMGATE_JWT_ISSUER: ISSUER, STREAMGATE_JWT_JWKS: url, STREAMGATE_JWT_AUDIENCE: 'streamgate', STREAMGATE_JWT_PRINCIPAL_CLAIM: 'preferred_username' })
    try {
      const sign = (claims: Record<string, unknown>, aud = 'streamgate'): Promise<string> =>
        new SignJWT(claims).setProtectedHeader({ alg: 'RS256', kid: 'k1' }).setIssuer(ISSUER).setAudience(aud).setIssuedAt().setExpirationTime('5m').sign(privateKey)
      expect((await api(other.httpUrl, await sign({ preferred_username: 'admin' }), 'GET', '/v1/principals')).status).toBe(200)
      expect((await api(other.httpUrl, await sign({ preferred_username: 'admin' }, 'someone-else'), 'GET', '/v1/principals')).status).toBe(401)
      expect((await api(other.httpUrl, await sign({ sub: 'admin' }), 'GET', '/v1/principals')).status).toBe(401)
      // An HS256 token "signed" with the public key (algorithm confusion) is refused.
      const confused = await new SignJWT({ preferred_username: 'admin' }).setProtectedHeader({ alg: 'HS256' }).setIssuer(ISSUER).setAudience('streamgate').setExpirationTime('5m')
        .sign(new TextEncoder().encode(JSON.stringify(jwk)))
      expect((await api(other.httpUrl, confused, 'GET', '/v1/principals')).status).toBe(401)
    } finally {
      await other.stop()
      jwks.close()
    }
  })
})

describe('disabling and deleting principals', () => {
  it('ends the sessions of a disabled principal and refuses it until enabled again', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    const gone = closed(c, 3000)
    const p = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/principals/${dev.id}`)
    const off = await api(gw.httpUrl, ADMIN_KEY, 'PATCH', `/v1/principals/${dev.id}`, { disabled: true }, { 'if-match': p.headers.get('etag')! })
    expect(off.status).toBe(200)
    await gone
    expect(await connectRefused(gw.mqttUrl, dev.id, dev.key)).toBe(5)
    expect((await api(gw.httpUrl, dev.key, 'GET', '/v1/datasets')).status).toBe(401)
    const on = await api(gw.httpUrl, ADMIN_KEY, 'PATCH', `/v1/principals/${dev.id}`, { disabled: false }, { 'if-match': off.headers.get('etag')! })
    expect(on.status).toBe(200)
    const again = await connect(gw.mqttUrl, dev.id, dev.key)
    await again.endAsync()
    const actions = ((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/audit?resource=principals/${dev.id}`)).body.entries as { action: string }[]).map((e) => e.action)
    expect(actions).toEqual(expect.arrayContaining(['principal.disable', 'principal.enable']))
  })

  it('deletes a principal with its keys and grants, ending its sessions', async () => {
    const ds = uniqueId('del')
    await createDataset(gw, ds)
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    const gone = closed(c, 3000)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/principals/${dev.id}`)).status).toBe(204)
    await gone
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/principals/${dev.id}`)).status).toBe(404)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/access`)).body.grants).toEqual([])
    expect(await connectRefused(gw.mqttUrl, dev.id, dev.key)).toBe(4)
    // The bootstrap admin cannot be locked out.
    expect((await api(gw.httpUrl, ADMIN_KEY, 'DELETE', '/v1/principals/admin')).status).toBe(409)
  })

  it('rotates a key with a grace period: both work until it ends, then the old key\'s sessions end too', async () => {
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const old = await connect(gw.mqttUrl, dev.id, dev.key)
    const oldGone = closed(old, 4000)
    const r = await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/principals/${dev.id}/keys/${dev.keyId}/rotate`, { graceSeconds: 1 })
    expect(r.status).toBe(201)
    expect((await api(gw.httpUrl, r.body.key, 'GET', '/v1/datasets')).status).toBe(200)
    expect((await api(gw.httpUrl, dev.key, 'GET', '/v1/datasets')).status).toBe(200)
    await new Promise((resolve) => setTimeout(resolve, 1200))
    expect((await api(gw.httpUrl, dev.key, 'GET', '/v1/datasets')).status).toBe(401)
    expect((await api(gw.httpUrl, r.body.key, 'GET', '/v1/datasets')).status).toBe(200)
    await oldGone
  })

  it('refuses an external JWT without an expiry', async () => {
    const svc = await createPrincipalWithKey(gw, uniqueId('svc'), 'service')
    const forever = await new SignJWT({ sub: svc.id }).setProtectedHeader({ alg: 'HS256' }).setIssuer(ISSUER).setIssuedAt().sign(new TextEncoder().encode(SECRET))
    expect((await api(gw.httpUrl, forever, 'GET', '/v1/datasets')).status).toBe(401)
  })
})
