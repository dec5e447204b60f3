import { afterEach, describe, expect, it, vi } from 'vitest'
import { AuditLog, type AuditEntry, type AuditFilter, type AuditInput, type AuditStore } from '../../gateway/audit.js'

class MemoryAuditStore implements AuditStore {
  rows: AuditEntry[] = []
  async appendAudit (entries: readonly AuditEntry[]): Promise<void> { this.rows.push(...entries) }
  async lastAudit (): Promise<AuditEntry | null> { return this.rows.at(-1) ?? null }
  async listAudit (_f: AuditFilter, limit: number): Promise<AuditEntry[]> { return [...this.rows].reverse().slice(0, limit) }
  async auditRange (fromSeq: number, limit: number): Promise<AuditEntry[]> { return this.rows.filter((e) => e.seq >= fromSeq).slice(0, limit) }
}

const denial = (actor: string): AuditInput => ({ actor, address: '10.0.0.1', action: 'mqtt.subscribe', resource: 'mqtt/filter/#', outcome: 'denied', before: null, after: null, detail: 'x', requestId: null })

describe('audit log', () => {
  it('records a repeated denial 20 times a minute per actor, address and action, and keeps the chain whole', async () => {
    const store = new MemoryAuditStore()
    const log = await AuditLog.open(store)
    for (let i = 0; i < 500; i++) log.record(denial('mallory'))
    for (let i = 0; i < 5; i++) log.record(denial('bob'))
    await log.append({ actor: 'admin', address: null, action: 'dataset.create', resource: 'datasets/a', outcome: 'ok', before: null, after: '"e"', detail: null, requestId: null })
    expect(store.rows.filter((e) => e.actor === 'mallory')).toHaveLength(20)
    expect(store.rows.filter((e) => e.actor === 'bob')).toHaveLength(5)
    expect(await log.verify()).toMatchObject({ ok: true, checked: 26 })
    // Removing the newest entry is found too.
    store.rows.pop()
    expect((await log.verify()).ok).toBe(false)
  })

  describe('summaries of counted denials', () => {
    afterEach(() => { vi.useRealTimers() })

    it('writes them when the minute ends, with no later denial needed, and on close', async () => {
      vi.useFakeTimers({ toFake: ['Date', 'setTimeout', 'clearTimeout'] })
      const store = new MemoryAuditStore()
      const log = await AuditLog.open(store)
      for (let i = 0; i < 100; i++) log.record(denial('mallory'))
      await vi.advanceTimersByTimeAsync(61_000)
      await log.flush()
      const summary = store.rows.filter((e) => e.actor === 'mallory' && /80 more denials like this one/.test(e.detail ?? ''))
      expect(store.rows.filter((e) => e.actor === 'mallory')).toHaveLength(21)
      expect(summary).toHaveLength(1)
      // A second burst, cut short by close(): summarized then.
      for (let i = 0; i < 30; i++) log.record(denial('mallory'))
      await log.close()
      expect(store.rows.filter((e) => /10 more denials like this one/.test(e.detail ?? ''))).toHaveLength(1)
      expect(await log.verify()).toMatchObject({ ok: true })
    })

    it('counts denials from beyond 10,000 distinct sources in a minute in one summary', async () => {
      const store = new MemoryAuditStore()
      const log = await AuditLog.open(store)
      for (let i = 0; i < 10_050; i++) log.record(denial(`actor-${i}`))
      await log.close()
      expect(store.rows.filter((e) => e.outcome === 'denied')).toHaveLength(10_000)
      const summary = store.rows.filter((e) => e.action === 'audit.denials_summarized')
      expect(summary.map((e) => e.detail)).toEqual([expect.stringMatching(/^50 denied accesses from beyond 10,000 distinct sources/)])
    })
  })
})
