// The sink thread yields the CPU to the live path (STREAMGATE_SINK_PRIORITY, bin/thread-priority.ts).
import { execFileSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import { threadScheduling } from '../../bin/thread-priority.js'
import { startTestGateway, waitUntil } from '../helpers.js'

const SCHED_IDLE = 5
const hasChrt = ((): boolean => { try { execFileSync('chrt', ['--help'], { stdio: 'ignore' }); return true } catch { return false } })()

/** Threads of this process (this test file's own) in the idle class, or at nice 19 without chrt. */
function lowered (): number[] {
  return [...threadScheduling()].filter(([, t]) => hasChrt ? t.policy === SCHED_IDLE : t.nice === 19).map(([tid]) => tid)
}

describe.runIf(process.platform === 'linux')('STREAMGATE_SINK_PRIORITY', () => {
  it('idle: the sink thread, and only it, runs in the idle class; normal (the default): none does', async () => {
    expect(lowered()).toEqual([])
    const gw = await startTestGateway({ STREAMGATE_SINK_PRIORITY: 'idle' })
    const [sink] = lowered()
    expect(lowered()).toHaveLength(1)
    // It is a thread of the gateway, not the test's own.
    expect(sink).not.toBe(process.pid)
    await gw.stop()
    await waitUntil(() => lowered().length === 0, 10_000, 'the sink thread to end')
    const normal = await startTestGateway()
    try {
      expect(lowered()).toEqual([])
    } finally {
      await normal.stop()
    }
  })
})
