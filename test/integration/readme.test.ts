// The README's walk-through ("A first dataset, device and subscriber"), run as a new user would: its
// shell block, unchanged but for the three addresses, with curl, mosquitto_pub and mosquitto_sub
// against a gateway started here. Keeps the README true.
import { execFile } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, startTestGateway, type TestGateway } from '../helpers.js'

let gw: TestGateway
beforeAll(async () => { gw = await startTestGateway() })
afterAll(async () => { await gw?.stop() })

function walkThrough (): string {
  const readme = fs.readFileSync(path.join(import.meta.dirname, '../../README.md'), 'utf8')
  const section = readme.slice(readme.indexOf('## A first dataset, device and subscriber'))
  const block = /```sh\n([\s\S]*?)```/.exec(section)
  if (block === null) throw new Error('README: no sh block in "A first dataset, device and subscriber"')
  return block[1]!
}

describe('README walk-through', () => {
  it('creates a dataset, a device, a key and grants, publishes, queries, revokes, and finds it all in the audit log', async () => {
    const script = walkThrough()
      .replace(/^ADMIN=.*$/m, `ADMIN=${ADMIN_KEY}`)
      .replace(/^API=.*$/m, `API=${gw.httpUrl}/v1`)
      .replace(/^MQTT_PORT=.*$/m, `MQTT_PORT=${gw.sg.addresses.mqtt.port}`)
    expect(script).toContain(`ADMIN=${ADMIN_KEY}`)
    // The subscriber runs in the background, as in the README; it is stopped when the script ends.
    const { stdout, stderr } = await new Promise<{ stdout: string, stderr: string }>((resolve, reject) => {
      execFile('bash', ['-c', `trap 'kill $(jobs -p) 2>/dev/null' EXIT\n${script}\necho '--- end'`], { timeout: 60_000 }, (err, stdout, stderr) => {
        if (err !== null) reject(Object.assign(err, { stdout, stderr }))
        else resolve({ stdout, stderr })
      })
    })
    expect(stdout).toContain('--- end')
    // every creation answered with the resource, none with a problem
    expect(stdout).not.toContain('"type":"https://')
    for (const id of ['"id":"weather"', '"id":"sensor-1"', '"id":"dashboard"']) expect(stdout).toContain(id)
    // the subscriber printed the reading
    expect(stdout).toMatch(/datasets\/weather\/sensor-1 \{"ts": 1767225600000, "site": "roof", "temp": 21.5, "hum": 48\}/)
    // records and the aggregate query answer it
    expect(stdout).toMatch(/"records":\[\{[^\]]*"temp":21.5/)
    expect(stdout).toMatch(/"temp_avg":21.5/)
    // the revoked key is refused
    expect(stderr).toMatch(/Connection Refused: bad user name or password|not authori[sz]ed/i)
    // the audit log has each step, and its chain verifies
    for (const action of ['dataset.create', 'principal.create', 'key.issue', 'access.grant', 'key.revoke']) expect(stdout).toContain(action)
    expect(stdout).toMatch(/"ok":true/)
  }, 90_000)
})
