// RecentOrigins: the ids of the last `max` distinct messages ingested, per principal, and the ones in flight.
import { describe, expect, it } from 'vitest'
import { RecentOrigins } from '../../gateway/origins.js'

describe('RecentOrigins', () => {
  it('claims an id once: pending while it is journaled, done once committed, new again after an abort', () => {
    const o = new RecentOrigins(10)
    expect(o.begin('p', 'a')).toBe('new')
    expect(o.begin('p', 'a')).toBe('pending')
    expect(o.begin('q', 'a')).toBe('new') // ids are per principal
    o.commit('p', 'a')
    expect(o.begin('p', 'a')).toBe('done')
    o.abort('q', 'a')
    expect(o.begin('q', 'a')).toBe('new')
  })

  it('forgets the oldest beyond max; an id remembered again is the newest, and takes one place', () => {
    const o = new RecentOrigins(2)
    o.add('p', 'a')
    o.add('p', 'b')
    o.add('p', 'b') // the journal may hold an id twice (seeding at start reads both)
    expect(o.begin('p', 'a')).toBe('done')
    expect(o.size).toBe(2)
    o.add('p', 'a') // a is now newer than b
    o.add('p', 'c') // forgets b
    expect(o.begin('p', 'b')).toBe('new')
    o.abort('p', 'b')
    expect(o.begin('p', 'a')).toBe('done')
    expect(o.begin('p', 'c')).toBe('done')
  })

  it('remembers exactly what a plain list of the last max distinct ids would, over many rounds', () => {
    let seed = 42
    const random = (n: number): number => { seed = (seed * 1103515245 + 12345) % 2 ** 31; return seed % n }
    const o = new RecentOrigins(50)
    let list: string[] = []
    for (let i = 0; i < 20_000; i++) {
      const id = `m-${random(120)}`
      o.add('p', id)
      list = [...list.filter((x) => x !== id), id].slice(-50)
      if (i % 97 === 0) {
        for (let j = 0; j < 120; j++) {
          const claim = o.begin('p', `m-${j}`)
          expect(claim).toBe(list.includes(`m-${j}`) ? 'done' : 'new')
          if (claim === 'new') o.abort('p', `m-${j}`)
        }
      }
    }
    expect(o.size).toBe(list.length)
  })
})
