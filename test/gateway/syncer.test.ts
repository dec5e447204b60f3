import fs from 'node:fs'
import path from 'node:path'
import { DuckDBInstance } from '@duckdb/node-api'
import { afterAll, describe, expect, it } from 'vitest'
import { Journal, type JournalRecord } from '../../gateway/journal.js'
import { Syncer } from '../../gateway/syncer.js'
import { threadScheduling } from '../../bin/thread-priority.js'
import { sleep, tmpDataDir, waitUntil } from '../helpers.js'

const dir = tmpDataDir()
afterAll(() => { fs.rmSync(dir, { recursive: true, force: true }) })

const sync = (s: Syncer, fd: number): Promise<NodeJS.ErrnoException | null> => new Promise((resolve) => s.fdatasync(fd, resolve))
/** What `p` settles with, or 'late' after `ms`. */
const within = <T>(p: Promise<T>, ms: number): Promise<T | 'late'> => Promise.race([p, sleep(ms).then(() => 'late' as const)])

/** Runs `fn` with a new file of this suite open (`bytes` written), then closes it. */
async function withFile (name: string, bytes: number, fn: (fd: number) => Promise<void>): Promise<void> {
  const fd = fs.openSync(path.join(dir, name), 'w')
  try {
    if (bytes > 0) fs.writeSync(fd, Buffer.alloc(bytes, 1))
    await fn(fd)
  } finally {
    fs.closeSync(fd)
  }
}

describe('journal sync thread', () => {
  it('syncs on its own thread, reports a failed fdatasync with its errno, and closes', async () => {
    const s = new Syncer()
    await withFile('errno', 1, async (fd) => {
      expect(await sync(s, fd)).toBeNull()
      const bad = await sync(s, 1 << 20) // not an open descriptor
      expect(bad?.code).toBe('EBADF')
      expect(bad?.syscall).toBe('fdatasync')
      // A failure does not stop the thread: the journal decides what a failed sync means.
      expect(await sync(s, fd)).toBeNull()
      await s.close()
      expect((await sync(s, fd))?.message).toMatch(/closed/)
    })
  })

  it('waits again after a stale wake-up (the previous sync\'s notify landing late), so the callback still comes', async () => {
    const s = new Syncer()
    await withFile('stale', 0, async (fd) => {
      expect(await sync(s, fd)).toBeNull()
      fs.writeSync(fd, Buffer.alloc(32 * 1024 * 1024, 1)) // so the next fdatasync takes a while
      const second = sync(s, fd)
      // The thread stores DONE, then notifies: a notify of the previous sync can wake this wait early.
      Atomics.notify((s as unknown as { shared: Int32Array }).shared, 2)
      expect(await within(second, 10_000)).toBeNull()
      await s.close()
      await s.close() // idempotent
    })
  })

  it.runIf(process.platform === 'linux')('runs at the nice value it is given, its own thread only; refuses one outside 0-19', async () => {
    const niceThreads = (n: number): number => [...threadScheduling().values()].filter((t) => t.nice === n).length
    const before = niceThreads(7)
    const s = new Syncer({ nice: 7 })
    try {
      await waitUntil(() => niceThreads(7) === before + 1, 5000, 'the sync thread at nice 7')
      await withFile('nice', 1, async (fd) => { expect(await sync(s, fd)).toBeNull() })
      expect(threadScheduling().get(process.pid)?.nice).toBe(0)
    } finally {
      await s.close()
    }
    expect(() => new Syncer({ nice: 20 })).toThrow(RangeError)
    expect(() => new Syncer({ nice: -1 })).toThrow(RangeError)
  })

  it('closes after the sync in flight has called back', async () => {
    const s = new Syncer()
    await withFile('close', 8 * 1024 * 1024, async (fd) => {
      let result: Error | null | undefined
      s.fdatasync(fd, (err) => { result = err })
      await s.close()
      expect(result).toBeNull()
    })
  })

  it('acknowledges while long DuckDB queries fill libuv\'s threadpool', async () => {
    // Four queries occupy the four threadpool threads for as long as they run; on the threadpool the
    // commit below waited for them (5.8 s measured), on the sync thread it does not.
    const { journal } = await Journal.open({ dir: path.join(dir, 'journal'), maxBytes: 1 << 30, segmentBytes: 1 << 20 })
    const db = await DuckDBInstance.create(':memory:', { threads: '1' })
    const conns = await Promise.all([1, 2, 3, 4].map(() => db.connect()))
    const queries = conns.map((c) => c.run('SELECT sum(hash(i)) FROM range(100000000000) t(i)').then(() => 'finished', () => 'interrupted'))
    try {
      await sleep(300)
      const record: JournalRecord = { arrivalUs: 1_700_000_000_000_000, dataset: 'ds', version: 1, device: 'd', principal: 'p', payload: Buffer.from('{}') }
      const acked = new Promise<Error | null>((resolve) => journal.append(record, resolve))
      expect(await within(acked, 2000)).toBeNull()
    } finally {
      for (const c of conns) c.interrupt()
      expect(await Promise.all(queries)).toEqual(['interrupted', 'interrupted', 'interrupted', 'interrupted'])
      for (const c of conns) c.closeSync()
      db.closeSync()
      await journal.close()
    }
  })
})
