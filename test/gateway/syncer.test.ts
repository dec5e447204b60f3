import fs from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { DuckDBInstance } from '@duckdb/node-api'
import { afterEach, describe, expect, it } from 'vitest'
import { Journal, type JournalRecord } from '../../gateway/journal.js'
import { Syncer } from '../../gateway/syncer.js'

const dirs: string[] = []
function tmpDir (): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'sg-syncer-'))
  dirs.push(d)
  return d
}
afterEach(() => { for (const d of dirs.splice(0)) fs.rmSync(d, { recursive: true, force: true }) })

const sync = (s: Syncer, fd: number): Promise<NodeJS.ErrnoException | null> => new Promise((resolve) => s.fdatasync(fd, resolve))

describe('journal sync thread', () => {
  it('syncs on its own thread, reports a failed fdatasync with its errno, and closes', async () => {
    const s = new Syncer()
    const file = path.join(tmpDir(), 'f')
    const fd = fs.openSync(file, 'w')
    try {
      fs.writeSync(fd, 'x')
      expect(await sync(s, fd)).toBeNull()
      const bad = await sync(s, 1 << 20) // not an open descriptor
      expect(bad?.code).toBe('EBADF')
      expect(bad?.syscall).toBe('fdatasync')
      // A failure does not stop the thread: the journal decides what a failed sync means.
      expect(await sync(s, fd)).toBeNull()
      await s.close()
      expect((await sync(s, fd))?.message).toMatch(/closed/)
    } finally {
      fs.closeSync(fd)
    }
  })

  it('waits again after a stale wake-up (the previous sync\'s notify landing late), so the callback still comes', async () => {
    const s = new Syncer()
    const fd = fs.openSync(path.join(tmpDir(), 'f'), 'w')
    try {
      expect(await sync(s, fd)).toBeNull()
      fs.writeSync(fd, Buffer.alloc(32 * 1024 * 1024, 1)) // so the next fdatasync takes a while
      const second = sync(s, fd)
      // The thread stores DONE, then notifies: a notify of the previous sync can wake this wait early.
      Atomics.notify((s as unknown as { shared: Int32Array }).shared, 2)
      const late = new Promise<'late'>((resolve) => setTimeout(() => resolve('late'), 10_000))
      expect(await Promise.race([second, late])).toBeNull()
      await s.close()
      await s.close() // idempotent
    } finally {
      fs.closeSync(fd)
    }
  })

  it('closes after the sync in flight has called back', async () => {
    const s = new Syncer()
    const fd = fs.openSync(path.join(tmpDir(), 'f'), 'w')
    try {
      fs.writeSync(fd, Buffer.alloc(8 * 1024 * 1024, 1))
      let called = false
      s.fdatasync(fd, (err) => { expect(err).toBeNull(); called = true })
      await s.close()
      expect(called).toBe(true)
    } finally {
      fs.closeSync(fd)
    }
  })

  it('acknowledges while long DuckDB queries fill libuv\'s threadpool', async () => {
    // Four queries occupy the four threadpool threads for as long as they run; on the threadpool the
    // commit below waited for them (5.8 s measured), on the sync thread it does not.
    const { journal } = await Journal.open({ dir: tmpDir(), maxBytes: 1 << 30, segmentBytes: 1 << 20 })
    const db = await DuckDBInstance.create(':memory:', { threads: '1' })
    const conns = await Promise.all([1, 2, 3, 4].map(() => db.connect()))
    const queries = conns.map((c) => c.run('SELECT sum(hash(i)) FROM range(100000000000) t(i)').then(() => 'finished', () => 'interrupted'))
    try {
      await new Promise((resolve) => setTimeout(resolve, 300))
      const record: JournalRecord = { arrivalUs: 1_700_000_000_000_000, dataset: 'ds', version: 1, device: 'd', principal: 'p', payload: Buffer.from('{}') }
      const acked = new Promise<Error | null>((resolve) => journal.append(record, resolve))
      const late = new Promise<'late'>((resolve) => setTimeout(() => resolve('late'), 2000))
      expect(await Promise.race([acked, late])).toBeNull()
    } finally {
      for (const c of conns) c.interrupt()
      expect(await Promise.all(queries)).toEqual(['interrupted', 'interrupted', 'interrupted', 'interrupted'])
      for (const c of conns) c.closeSync()
      db.closeSync()
      await journal.close()
    }
  })
})
