// Hostile API input: injection in every query field, path traversal in ids, malformed and oversized
// JSON and NDJSON, wrong content types, tampered cursors. Each gets a 4xx problem with a stable type;
// nothing is executed, nothing leaks, the gateway keeps serving.
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, createDataset, createPrincipalWithKey, setGrants, startTestGateway, storedCount, type TestGateway, uniqueId } from '../helpers.js'

let gw: TestGateway
let ds: string
let secret: string
let reader: { id: string, key: string }
beforeAll(async () => {
  gw = await startTestGateway({ STREAMGATE_API_RATE: '0', STREAMGATE_API_RATE_PER_ADDRESS: '0' })
  ds = uniqueId('pub')
  secret = uniqueId('secret')
  await createDataset(gw, ds, { tags: ['site'], fields: { temp: 'double', note: 'string' } })
  await createDataset(gw, secret, { fields: { temp: 'double' } })
  reader = await createPrincipalWithKey(gw, uniqueId('reader'))
  await setGrants(gw, ds, [{ principal: reader.id, actions: ['query', 'publish'], devices: ['+'] }])
  const r = await api(gw.httpUrl, ADMIN_KEY, 'POST', `/v1/datasets/${secret}/records`, [{ device: 'd', temp: 99 }])
  expect(r.status).toBe(202)
  await api(gw.httpUrl, reader.key, 'POST', `/v1/datasets/${ds}/records`, [{ device: 'd1', site: 'a', temp: 1, note: 'x' }, { device: 'd2', site: 'b', temp: 2 }])
  await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
})
afterAll(async () => { await gw?.stop() })

const PROBLEM = /^https:\/\/streamgate\.dev\/problems\/[a-z-]+$/

describe('hostile API input', () => {
  it('refuses injection in every query field, and answers only the granted dataset', async () => {
    const attempts: unknown[] = [
      { select: [`temp" FROM data."${secret}" --`] },
      { select: ['temp; DROP TABLE sg_principals'] },
      { where: [{ column: 'temp) OR (1=1', op: '=', value: 1 }] },
      { where: [{ column: 'temp', op: '= 1 OR 1=1 --', value: 1 }] },
      { where: [{ column: 'temp', op: 'in', value: ['1) UNION SELECT * FROM sg_keys --'] }] },
      { aggregate: { 'temp); DROP TABLE x; --': ['avg'] } },
      { aggregate: { temp: ['avg); DROP TABLE x; --'] } },
      { groupBy: ['site"; --'] },
      { bucket: '1h; DROP TABLE x' },
      { cursor: 'eyJ0cyI6IjEgT1IgMT0xIn0' },
      { cursor: Buffer.from(JSON.stringify(["1' OR '1'='1", 'x', 'y'])).toString('base64url') },
      { from: "2026-01-01' OR '1'='1" },
      { limit: -1 }, { limit: 1e12 }, { order: 'desc; DROP TABLE x' },
      { unknownField: 1 }, [], 'SELECT 1', null
    ]
    for (const body of attempts) {
      const r = await api(gw.httpUrl, reader.key, 'POST', `/v1/datasets/${ds}/query`, body)
      expect([400], JSON.stringify(body)).toContain(r.status)
      expect(r.body.type).toMatch(PROBLEM)
    }
    // A value with quotes is data, not SQL: it is compared, and matches nothing.
    const q = await api(gw.httpUrl, reader.key, 'POST', `/v1/datasets/${ds}/query`, { where: [{ column: 'note', op: '!=', value: "x' OR '1'='1" }] })
    expect(q.status).toBe(200)
    expect(q.body.rows.map((r: { temp: number }) => r.temp).sort()).toEqual([1, 2])
    // Nothing of the other dataset came back, and the metadata is intact.
    expect(await storedCount(gw.sg, secret)).toBe(1)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/principals/${reader.id}`)).status).toBe(200)
  })

  it('refuses path traversal and odd ids in paths', async () => {
    for (const path of [
      `/v1/datasets/..%2F${secret}/records`, `/v1/datasets/${ds}%2F..%2F${secret}/records`, '/v1/datasets/%2e%2e/records',
      `/v1/datasets/${secret.toUpperCase()}/records`, '/v1/datasets/a%00b', '/v1/principals/..%2Fadmin', `/v1/principals/${'x'.repeat(5000)}`
    ]) {
      const r = await api(gw.httpUrl, reader.key, 'GET', path)
      expect([400, 403, 404], path).toContain(r.status)
      expect(r.body.type, path).toMatch(PROBLEM)
    }
  })

  it('refuses malformed, oversized and mistyped bodies with a clear problem', async () => {
    const post = (body: string, type: string): ReturnType<typeof api<any>> =>
      api(gw.httpUrl, reader.key, 'POST', `/v1/datasets/${ds}/records`, body, { 'content-type': type })
    const cases: [string, string, number, string][] = [
      ['[{"temp": 1', 'application/json', 400, 'bad-request'],
      ['{"temp": 1}', 'application/json', 400, 'validation'],
      ['[]', 'application/json', 400, 'validation'],
      ['[1, 2]', 'application/json', 422, 'unprocessable'],
      ['{"temp": 1}\n{"temp": ', 'application/x-ndjson', 400, 'bad-request'],
      ['temp=1', 'application/x-www-form-urlencoded', 415, 'unsupported-media-type'],
      ['<a>1</a>', 'text/xml', 415, 'unsupported-media-type'],
      ['[{"device": "../../etc", "temp": 1}]', 'application/json', 422, 'unprocessable']
    ]
    for (const [body, type, status, slug] of cases) {
      const r = await post(body, type)
      expect(r.status, `${type} ${body}`).toBe(status)
      expect(r.body.type).toBe(`https://streamgate.dev/problems/${slug}`)
    }
    // Ill-formed UTF-8 (a lone continuation byte, an overlong encoding) is refused, not stored with
    // U+FFFD in its place (MQTT refuses it as invalid_utf8 too); well-formed multi-byte characters
    // sent as a stream (possibly split between reads) pass.
    const before = await storedCount(gw.sg, ds)
    for (const [type, bytes] of [
      ['application/json', Buffer.concat([Buffer.from('[{"device": "u1", "temp": 1, "note": "'), Buffer.from([0x80]), Buffer.from('"}]')])],
      ['application/json; charset=utf-8', Buffer.concat([Buffer.from('[{"device": "u1", "temp": 1, "note": "'), Buffer.from([0xc0, 0xaf]), Buffer.from('"}]')])],
      ['application/x-ndjson', Buffer.concat([Buffer.from('{"device": "u1", "temp": 1}\n{"device": "u1", "temp": 2, "note": "'), Buffer.from([0xff]), Buffer.from('"}\n')])]
    ] as const) {
      const r = await fetch(`${gw.httpUrl}/v1/datasets/${ds}/records`, { method: 'POST', headers: { authorization: `Bearer ${reader.key}`, 'content-type': type }, body: bytes })
      const problem = await r.json() as { type: string, detail: string }
      expect(r.status, type).toBe(400)
      expect(problem.type).toBe('https://streamgate.dev/problems/bad-request')
      expect(problem.detail).toMatch(/not valid UTF-8/)
    }
    // Another charset than UTF-8 is refused before the body is read (JSON between systems is UTF-8,
    // RFC 8259; a UTF-16 decoder would store U+FFFD for a lone surrogate), however it is spelt.
    const utf16 = Buffer.from('\ufeff[{"device": "u1", "temp": 1, "note": "\ud800"}]', 'utf16le')
    for (const type of ['application/json; charset=utf-16', 'application/json; charset="UTF-16LE"', 'application/x-ndjson; charset=latin1']) {
      const r = await fetch(`${gw.httpUrl}/v1/datasets/${ds}/records`, { method: 'POST', headers: { authorization: `Bearer ${reader.key}`, 'content-type': type }, body: utf16 })
      const problem = await r.json() as { type: string, detail: string }
      expect(r.status, type).toBe(415)
      expect(problem.type).toBe('https://streamgate.dev/problems/unsupported-media-type')
      expect(problem.detail).toMatch(/is not supported: send UTF-8/)
    }
    expect(await storedCount(gw.sg, ds)).toBe(before)
    const quoted = await fetch(`${gw.httpUrl}/v1/datasets/${ds}/records`, { method: 'POST', headers: { authorization: `Bearer ${reader.key}`, 'content-type': 'application/json; charset="UTF-8"' }, body: '[{"device": "u2", "temp": 2}]' })
    expect(quoted.status).toBe(202)
    const split = Buffer.from('{"device": "u2", "temp": 3, "note": "é✓"}\n')
    const chunks = [split.subarray(0, split.indexOf(0xc3) + 1), split.subarray(split.indexOf(0xc3) + 1)]
    const ok = await fetch(`${gw.httpUrl}/v1/datasets/${ds}/records`, {
      method: 'POST', headers: { authorization: `Bearer ${reader.key}`, 'content-type': 'application/x-ndjson' }, duplex: 'half',
      body: new ReadableStream({ start (c) { for (const x of chunks) c.enqueue(new Uint8Array(x)); c.close() } })
    } as RequestInit)
    expect(ok.status).toBe(202)
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    expect(await storedCount(gw.sg, ds)).toBe(before + 2)
    const big = await post('[' + '{"temp":1},'.repeat(1_000_000) + '{"temp":1}]', 'application/json')
    expect(big.status).toBe(413)
    const manyLines = await post('{"temp":1}\n'.repeat(200_000), 'application/x-ndjson')
    expect(manyLines.status).toBe(413)
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', '/healthz')).status).toBe(200)
  })

  it('refuses tampered audit cursors and odd filters', async () => {
    for (const q of ['cursor=abc', 'cursor=1e400', 'since=yesterday', "actor=x'%20OR%201=1", 'limit=0', 'limit=100000']) {
      const r = await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/audit?${q}`)
      if (q.startsWith('actor')) {
        expect(r.status).toBe(200)
        expect(r.body.entries).toEqual([])
      } else {
        expect(r.status, q).toBe(400)
      }
    }
  })
})
