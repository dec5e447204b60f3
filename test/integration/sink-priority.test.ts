// The sink thread yields the CPU to the live path while it keeps up, and gets it back while it lags
// (STREAMGATE_SINK_PRIORITY, STREAMGATE_SINK_IDLE_MAX_LAG_MS, bin/thread-priority.ts).
import { execFileSync } from 'node:child_process'
import { describe, expect, it } from 'vitest'
import type { SinkThread } from '../../bin/sink-thread.js'
import { canLeaveIdle, idleThreads } from '../../bin/thread-priority.js'
import { connect, createDataset, createPrincipalWithKey, setGrants, startTestGateway, uniqueId, waitUntil } from '../helpers.js'

const hasChrt = ((): boolean => { try { execFileSync('chrt', ['--help'], { stdio: 'ignore' }); return true } catch { return false } })()

describe.runIf(process.platform === 'linux' && hasChrt && canLeaveIdle())('STREAMGATE_SINK_PRIORITY', () => {
  it('idle (the default): the sink thread runs in the idle class until the shutdown; normal: no thread does', async () => {
    expect(idleThreads().size).toBe(0)
    const gw = await startTestGateway()
    try {
      const sink = gw.sg.consumers[0] as SinkThread
      // A call to the thread that waited over 100 ms while the gateway started (a busy machine) moves it to normal for a while.
      await waitUntil(() => sink.priority === 'idle', 5000, 'the sink thread to run in the idle class')
      const idle = [...idleThreads()]
      expect(idle.length).toBe(1)
      // The gateway's worker thread, not the test's own.
      expect(idle).not.toContain(process.pid)
      // What a shutdown does before it waits for the sink to drain.
      await sink.stopYielding()
      expect(sink.priority).toBe('normal')
      expect(idleThreads().size).toBe(0)
    } finally {
      await gw.stop()
    }
    await waitUntil(() => idleThreads().size === 0, 10_000, 'the sink threads to end')
    const normal = await startTestGateway({ STREAMGATE_SINK_PRIORITY: 'normal' })
    try {
      expect(idleThreads().size).toBe(0)
      expect((normal.sg.consumers[0] as SinkThread).priority).toBe('normal')
    } finally {
      await normal.stop()
    }
  })

  it('moves the sink thread to normal priority while it lags more than STREAMGATE_SINK_IDLE_MAX_LAG_MS, and back once it caught up', async () => {
    const gw = await startTestGateway({ STREAMGATE_SINK_IDLE_MAX_LAG_MS: '200' })
    try {
      const sink = gw.sg.consumers[0] as SinkThread
      const ds = uniqueId('prio')
      await createDataset(gw, ds, { fields: { n: 'long' } })
      const dev = await createPrincipalWithKey(gw, uniqueId('dev'))
      await setGrants(gw, ds, [{ principal: dev.id, actions: ['publish'] }])
      // Idle first (a call that waited over 100 ms, on a busy machine, moves it to normal for a while), so that the lag below is what moves it.
      await waitUntil(() => sink.priority === 'idle', 5000, 'the sink thread to run in the idle class')
      const mine = idleThreads()
      expect(mine.size).toBe(1)
      // A sink that stores nothing lags from the first record on.
      await sink.pause()
      const c = await connect(gw.mqttUrl, dev.id, dev.key)
      await c.publishAsync(`datasets/${ds}/${dev.id}`, JSON.stringify({ n: 1 }), { qos: 1 })
      await c.endAsync()
      const published = performance.now()
      await waitUntil(() => sink.priority === 'normal', 5000, 'the sink thread to leave the idle class')
      expect(performance.now() - published).toBeGreaterThanOrEqual(150)
      expect([...mine].filter((tid) => idleThreads().has(tid))).toEqual([])
      sink.resume()
      await sink.waitFor(gw.sg.journal.committedSeq, 10_000)
      await waitUntil(() => sink.priority === 'idle', 5000, 'the sink thread to go back to the idle class')
      expect([...idleThreads()].sort()).toEqual([...mine].sort())
    } finally {
      await gw.stop()
    }
  })
})
