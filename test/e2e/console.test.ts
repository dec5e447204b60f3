// The admin console end to end, in Debian's headless Chromium driven by playwright-core (no browser
// downloads): sign in, watch the overview, create a dataset, watch a device's records arrive in the
// live tail over MQTT over WebSocket, and see the tail end when the signed-in principal's key is
// revoked. Screenshots of each page go to test/artifacts/ (not committed). Without Chromium the suite
// skips with a message, except in CI (.ci/run installs it), where it fails.
import fs from 'node:fs'
import path from 'node:path'
import type { MqttClient } from 'mqtt'
import { type Browser, chromium, type Page } from 'playwright-core'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { ADMIN_KEY, api, connect, createPrincipalWithKey, setGrants, startTestGateway, type TestGateway, uniqueId } from '../helpers.js'

const CHROMIUM = process.env.STREAMGATE_TEST_CHROMIUM ?? '/usr/bin/chromium'
const available = fs.existsSync(CHROMIUM)
if (!available && process.env.CI !== undefined) throw new Error(`Chromium is required in CI (${CHROMIUM}); .ci/run installs Debian's chromium package`)
if (!available) process.stdout.write(`  console e2e skipped: no Chromium at ${CHROMIUM} (apt-get install chromium, or set STREAMGATE_TEST_CHROMIUM)\n`)

const ARTIFACTS = path.join(import.meta.dirname, '..', 'artifacts')

describe.skipIf(!available)('the admin console in Chromium', () => {
  let gw: TestGateway
  let browser: Browser
  let page: Page
  const clients: MqttClient[] = []

  beforeAll(async () => {
    fs.mkdirSync(ARTIFACTS, { recursive: true })
    gw = await startTestGateway()
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync']
    })
    page = await browser.newPage({ viewport: { width: 1280, height: 800 } })
    // The page's own errors show in the test output.
    page.on('console', (m) => { if (m.type() === 'error') process.stdout.write(`  [console] ${m.text()}\n`) })
    page.on('pageerror', (e) => process.stdout.write(`  [page error] ${e.message}\n`))
  }, 60_000)

  afterAll(async () => {
    for (const c of clients) await c.endAsync(true).catch(() => undefined)
    await browser?.close()
    await gw?.stop()
  })

  async function signIn (principal: string, key: string): Promise<void> {
    await page.goto(`${gw.httpUrl}/console/`)
    await page.getByLabel('Principal id').fill(principal)
    await page.getByLabel('API key').fill(key)
    await page.getByRole('button', { name: 'Sign in' }).click()
    await page.getByRole('navigation', { name: 'Pages' }).waitFor()
  }

  it('signs an admin in and shows live throughput, sessions and lag on the overview', async () => {
    await signIn('admin', ADMIN_KEY)
    await page.locator('[data-testid="sessions"] .value').waitFor()
    await page.locator('[data-testid^="lag-"]').first().waitFor()
    // The key is kept in this tab only.
    expect(await page.evaluate('[sessionStorage.getItem("sg.key") !== null, localStorage.length]')).toEqual([true, 0])
    // Rates: one point a second on each chart.
    await expect.poll(async () => ((await page.locator('[data-testid="in"] svg polyline').getAttribute('points')) ?? '').split(' ').length, { timeout: 5000 }).toBeGreaterThanOrEqual(2)
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-overview.png'), fullPage: true })
    await page.setViewportSize({ width: 390, height: 844 })
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-overview-phone.png'), fullPage: true })
    const overflow = await page.evaluate('document.documentElement.scrollWidth > document.documentElement.clientWidth')
    expect(overflow, 'no horizontal scroll at phone width').toBe(false)
    await page.setViewportSize({ width: 1280, height: 800 })
  })

  it('creates a dataset from the form and lists it; a bad schema gets the API\'s explanation', async () => {
    const ds = uniqueId('ui')
    await page.getByRole('link', { name: 'Datasets' }).click()
    await page.getByLabel('Id', { exact: true }).fill(ds)
    await page.getByLabel('Schema (JSON)').fill('{"fields": {"ts": "double"}}')
    await page.getByRole('button', { name: 'Create' }).click()
    await expect.poll(() => page.locator('#create-result').textContent()).toMatch(/reserved/)
    await page.getByLabel('Schema (JSON)').fill(JSON.stringify({ timestamp: 'ts', tags: ['site'], fields: { temp: 'double' } }))
    await page.getByRole('button', { name: 'Create' }).click()
    await expect.poll(() => page.locator('#create-result').textContent()).toBe(`Created ${ds}`)
    await page.getByRole('cell', { name: ds, exact: true }).waitFor()
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-datasets.png'), fullPage: true })
  })

  it('edits a dataset: the compatibility answer before saving, grants added and removed, rejects with reasons', async () => {
    const ds = (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/datasets?limit=200')).body.datasets.find((d: { id: string }) => d.id.startsWith('ui_')).id as string
    const dev = await createPrincipalWithKey(gw, uniqueId('edev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    clients.push(c)
    await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ temp: 'warm' }), { qos: 1 }) // refused: wrong type
    await page.getByRole('link', { name: 'Datasets' }).click()
    await page.getByRole('link', { name: ds, exact: true }).click()
    // An incompatible change: the answer names the problem and offers a new version.
    await page.getByLabel(/^Schema \(version 1, JSON\)$/).fill(JSON.stringify({ timestamp: 'ts', tags: ['site'], fields: { temp: 'long' } }))
    await page.getByRole('button', { name: 'Check compatibility' }).click()
    await expect.poll(() => page.locator('#schema-answer').textContent()).toContain('field temp changes type from double to long')
    expect(await page.locator('#schema-save').textContent()).toBe('Save as a new version')
    // A compatible one is saved in place.
    await page.getByLabel(/^Schema \(version 1, JSON\)$/).fill(JSON.stringify({ timestamp: 'ts', tags: ['site'], fields: { temp: 'double', hum: 'double' } }))
    await page.getByRole('button', { name: 'Check compatibility' }).click()
    await page.getByRole('button', { name: 'Save in place' }).click()
    await expect.poll(() => page.locator('#schema-answer').textContent()).toBe('Saved: version 1')
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}`)).body.schema.fields.hum).toBe('double')
    // Grants
    const other = await createPrincipalWithKey(gw, uniqueId('other'), 'service')
    await page.getByLabel('Principal', { exact: true }).fill(other.id)
    await page.getByLabel('subscribe').check()
    await page.getByLabel('query').check()
    await page.getByRole('button', { name: 'Grant', exact: true }).click()
    await page.locator('#grant-rows tr', { hasText: other.id }).waitFor()
    expect((await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/access`)).body.grants.find((g: { principal: string }) => g.principal === other.id).actions).toEqual(['subscribe', 'query'])
    await page.getByRole('button', { name: `Remove the grant of ${other.id}` }).click()
    await expect.poll(async () => (await api(gw.httpUrl, ADMIN_KEY, 'GET', `/v1/datasets/${ds}/access`)).body.grants.some((g: { principal: string }) => g.principal === other.id)).toBe(false)
    // Rejects
    await page.locator('#reject-rows tr', { hasText: 'wrong_type' }).waitFor()
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-dataset.png'), fullPage: true })
  })

  it('runs a query from the form: raw rows, then one-minute averages as a chart, paging and CSV', async () => {
    const ds = (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/datasets?limit=200')).body.datasets.find((d: { id: string }) => d.id.startsWith('ui_')).id as string
    const dev = await createPrincipalWithKey(gw, uniqueId('qdev'))
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
    const c = await connect(gw.mqttUrl, dev.id, dev.key)
    clients.push(c)
    const t0 = Date.UTC(2026, 0, 1, 12, 0, 0)
    // Three minutes of readings, one every 20 s: temp = minute * 10 + i.
    for (let i = 0; i < 9; i++) await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ ts: t0 + i * 20_000, site: 'roof', temp: Math.floor(i / 3) * 10 + (i % 3) }), { qos: 1 })
    await gw.sg.consumers[0]!.waitFor(gw.sg.journal.committedSeq)
    await page.getByRole('link', { name: 'Query' }).click()
    await page.getByLabel('Dataset', { exact: true }).selectOption(ds)
    await page.getByLabel('Rows per page').fill('5')
    await page.getByRole('button', { name: 'Run' }).click()
    await expect.poll(() => page.locator('#q-count').textContent()).toBe(' 5 rows')
    await page.getByRole('button', { name: 'Next page' }).click()
    await expect.poll(() => page.locator('#q-count').textContent()).toBe(' 9 rows')
    await page.getByLabel('Bucket (e.g. 10s, 1m, 1h; empty: raw rows)').fill('1m')
    await page.getByLabel('Aggregate column').selectOption('temp')
    await page.getByLabel('Aggregate', { exact: true }).selectOption('avg')
    await page.getByRole('button', { name: 'Run' }).click()
    await expect.poll(() => page.locator('#query-table tbody tr').allTextContents()).toEqual(['2026-01-01T12:00:00.000000Z1', '2026-01-01T12:01:00.000000Z11', '2026-01-01T12:02:00.000000Z21'])
    expect(((await page.locator('#query-chart polyline').getAttribute('points')) ?? '').split(' ')).toHaveLength(3)
    const [download] = await Promise.all([page.waitForEvent('download'), page.getByRole('button', { name: 'Export CSV' }).click()])
    const csv = fs.readFileSync((await download.path())!, 'utf8')
    expect(csv).toBe('bucket,temp_avg\n2026-01-01T12:00:00.000000Z,1\n2026-01-01T12:01:00.000000Z,11\n2026-01-01T12:02:00.000000Z,21\n')
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-query.png'), fullPage: true })
  })

  it('creates a principal, shows its new key once (it works), and revokes it', async () => {
    const id = uniqueId('uidev')
    await page.getByRole('link', { name: 'Principals' }).click()
    await page.locator('#p-id').fill(id)
    await page.getByLabel('Kind').selectOption('device')
    await page.getByRole('button', { name: 'Create principal' }).click()
    await expect.poll(() => page.locator('#principal-result').textContent()).toBe(`Created ${id}`)
    await page.getByRole('button', { name: `Issue a key for ${id}` }).click()
    const key = await page.locator('#new-key').textContent()
    expect(key).toMatch(/^sg_/)
    // The key is the principal's: the API answers it.
    expect((await api(gw.httpUrl, key!, 'GET', '/v1/datasets?limit=1')).status).toBe(200)
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-principals.png'), fullPage: true })
    await page.getByRole('button', { name: new RegExp(`^Revoke key_.* of ${id}$`) }).click()
    await expect.poll(async () => (await api(gw.httpUrl, key!, 'GET', '/v1/datasets?limit=1')).status).toBe(401)
  })

  it('lists the audit log with filters and shows the chain verified', async () => {
    await page.getByRole('link', { name: 'Audit' }).click()
    await expect.poll(() => page.locator('#audit-verify').textContent()).toMatch(/^Chain verified: \d+ entries, intact$/)
    await page.getByLabel('Action (e.g. key.revoke)').fill('key.revoke')
    await page.getByRole('button', { name: 'Filter' }).click()
    await expect.poll(async () => (await page.locator('#audit-rows tr').allTextContents()).every((t) => t.includes('key.revoke'))).toBe(true)
    expect(await page.locator('#audit-rows tr').count()).toBeGreaterThanOrEqual(1)
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-audit.png'), fullPage: true })
  })

  it('takes a new user from a first dataset to a device\'s live data through the console alone', async () => {
    const started = Date.now()
    const ds = uniqueId('first')
    const devId = uniqueId('sensor')
    await page.getByRole('link', { name: 'Datasets' }).click()
    await page.getByLabel('Id', { exact: true }).fill(ds)
    await page.getByRole('button', { name: 'Create' }).click() // the form's example schema: ts, site, temp
    await expect.poll(() => page.locator('#create-result').textContent()).toBe(`Created ${ds}`)
    await page.getByRole('link', { name: 'Principals' }).click()
    await page.locator('#p-id').fill(devId)
    await page.getByRole('button', { name: 'Create principal' }).click()
    await page.getByRole('button', { name: `Issue a key for ${devId}` }).click()
    const key = (await page.locator('#new-key').textContent())!
    await page.getByRole('link', { name: 'Datasets' }).click()
    await page.getByRole('link', { name: ds, exact: true }).click()
    await page.getByLabel('Principal', { exact: true }).fill(devId)
    await page.getByLabel('publish').check()
    await page.getByRole('button', { name: 'Grant', exact: true }).click()
    await page.locator('#grant-rows tr', { hasText: devId }).waitFor()
    await page.getByRole('link', { name: 'Live tail' }).click()
    await page.getByLabel('Dataset').selectOption(ds)
    await page.getByRole('button', { name: 'Start' }).click()
    await expect.poll(() => page.locator('#tail-status').textContent()).toBe(`Watching ${ds}`)
    // The device, with the key copied from the page (as with mosquitto_pub -u <id> -P <key>).
    const d = await connect(gw.mqttUrl, devId, key)
    clients.push(d)
    await d.publishAsync(`datasets/${ds}/${devId}`, JSON.stringify({ ts: Date.now(), site: 'garden', temp: 18.25 }), { qos: 1 })
    await page.locator('#tail-rows tr', { hasText: '18.25' }).waitFor({ timeout: 1000 })
    process.stdout.write(`  new user path through the console: dataset, device, key, grant, live record in ${Date.now() - started} ms (machine time; a person reads and types too)\n`)
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-first-device.png'), fullPage: true })
  })

  it('shows a device\'s record in the live tail within a second, with the viewer\'s own grants, and stops when its key is revoked', async () => {
    const ds = (await api(gw.httpUrl, ADMIN_KEY, 'GET', '/v1/datasets?limit=200')).body.datasets.find((d: { id: string }) => d.id.startsWith('ui_')).id as string
    const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
    const viewer = await createPrincipalWithKey(gw, uniqueId('viewer'), 'service')
    await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }, { principal: viewer.id, actions: ['subscribe'], devices: ['+'] }])
    await page.getByRole('button', { name: 'Sign out' }).click()
    await signIn(viewer.id, viewer.key)
    await page.getByRole('link', { name: 'Live tail' }).click()
    await page.getByLabel('Dataset').selectOption(ds)
    await page.getByRole('button', { name: 'Start' }).click()
    await expect.poll(() => page.locator('#tail-status').textContent(), { timeout: 10_000 }).toBe(`Watching ${ds}`)

    const d = await connect(gw.mqttUrl, dev.id, dev.key)
    clients.push(d)
    const t0 = Date.now()
    await d.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ ts: Date.now(), site: 'roof', temp: 21.5 }), { qos: 1 })
    await page.locator('#tail-rows tr', { hasText: '21.5' }).waitFor({ timeout: 1000 })
    process.stdout.write(`  live tail: the record was on the page ${Date.now() - t0} ms after the publish\n`)
    expect(await page.locator('#tail-rows tr').first().textContent()).toContain(dev.id)
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-tail.png'), fullPage: true })

    // The viewer's key revoked: its MQTT session ends, the tail says so and shows nothing more.
    expect((await api(gw.httpUrl, ADMIN_KEY, 'DELETE', `/v1/principals/${viewer.id}/keys/${viewer.keyId}`)).status).toBe(204)
    await expect.poll(() => page.locator('#tail-status').textContent(), { timeout: 5000 }).toBe('Disconnected')
    await d.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ ts: Date.now(), site: 'roof', temp: 99.5 }), { qos: 1 })
    await new Promise((resolve) => setTimeout(resolve, 500))
    expect(await page.locator('#tail-rows tr', { hasText: '99.5' }).count()).toBe(0)
    await page.screenshot({ path: path.join(ARTIFACTS, 'console-tail-revoked.png'), fullPage: true })
  })
})
