// docs/operations.md against the code: its ports table gives each listener's default and variable as
// the config schema has them, every metric it tells operators to watch exists on /metrics, and every
// fault the suite under test/faults provokes has a row saying what streamgate does and what to do.
import fs from 'node:fs'
import path from 'node:path'
import { afterAll, beforeAll, describe, expect, it } from 'vitest'
import { configSchema } from '../../config/index.js'
import { startTestGateway, type TestGateway } from '../helpers.js'

const root = path.join(import.meta.dirname, '../..')
const doc = fs.readFileSync(path.join(root, 'docs/operations.md'), 'utf8')

/** The rows of the markdown table that follows `heading`. */
function table (heading: string): string[][] {
  const at = doc.indexOf(heading)
  expect(at, heading).toBeGreaterThanOrEqual(0)
  const lines = doc.slice(at).split('\n')
  const start = lines.findIndex((l) => l.startsWith('|'))
  const rows: string[][] = []
  for (const l of lines.slice(start + 2)) {
    if (!l.startsWith('|')) break
    rows.push(l.split('|').slice(1, -1).map((c) => c.trim()))
  }
  return rows
}

const defaultOf = (key: string): unknown => (configSchema.shape as Record<string, { parse: (v: unknown) => unknown }>)[key]!.parse(undefined)

describe('docs/operations.md', () => {
  it('gives every listener its variable and default port', () => {
    const rows = table('### Ports')
    const portVars = Object.keys(configSchema.shape).filter((k) => /^STREAMGATE_[A-Z_]*PORT$/.test(k))
    expect(rows.map((r) => r[1]!.replaceAll('`', '')).sort()).toEqual(portVars.sort())
    for (const [port, variable] of rows) expect(Number(port), variable).toBe(defaultOf(variable!.replaceAll('`', '')))
  })

  describe('metrics to watch', () => {
    let gw: TestGateway
    beforeAll(async () => { gw = await startTestGateway() })
    afterAll(async () => { await gw?.stop() })

    it('names only metrics /metrics serves', async () => {
      const served = new Set([...(await (await fetch(`${gw.httpUrl}/metrics`)).text()).matchAll(/^# TYPE (\S+) /gm)].map((m) => m[1]!))
      const named = [...new Set([...doc.matchAll(/`(streamgate_[a-z_]+)/g)].map((m) => m[1]!))]
      expect(named.length).toBeGreaterThan(5)
      expect(named.filter((n) => !served.has(n))).toEqual([])
    })
  })

  it('says what happens and what to do for every fault the fault suite provokes', () => {
    const failures = table('## Recovering from failures').map((r) => r[0]!)
    // Each test file under test/faults and the row (by its first words) that covers it.
    const covered: Record<string, string[]> = {
      'amqp-kill': ['process killed'],
      'kill-loop': ['process killed'],
      clock: ['clock jumps'],
      'cluster-amqp': ['a node of several killed'],
      'cluster-nodes': ['a node of several killed'],
      'cluster-outage': ['Redis down', 'PostgreSQL down'],
      'full-disk': ['journal disk full'],
      'rabbit-flap': ['RabbitMQ down, slow or flapping'],
      'torn-journal': ['damaged journal entry']
    }
    const files = fs.readdirSync(path.join(root, 'test/faults')).filter((f) => f.endsWith('.test.ts')).map((f) => f.replace(/\.test\.ts$/, ''))
    expect(files.filter((f) => covered[f] === undefined), 'fault tests without a row in the mapping above').toEqual([])
    for (const f of files) {
      for (const row of covered[f]!) expect(failures.some((x) => x.startsWith(row)), `${f}: row "${row}"`).toBe(true)
    }
  })
})
