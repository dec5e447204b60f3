// RecentOrigins: the ids of the last `max` messages ingested, per principal, and the ones in flight.
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

  it('forgets the oldest beyond max, and an id remembered again counts from its latest remembering', () => {
    const o = new RecentOrigins(3)
    o.add('p', 'a')
    o.add('p', 'b')
    o.add('p', 'a') // a again: now newer than b
    o.add('p', 'c') // a's first slot comes round: a was remembered since, and stays
    expect(o.begin('p', 'a')).toBe('done')
    expect(o.begin('p', 'b')).toBe('done')
    expect(o.size).toBe(3)
    o.add('p', 'd') // forgets b, the oldest
    expect(o.begin('p', 'b')).toBe('new')
    o.abort('p', 'b')
    o.add('p', 'e') // forgets a, at its latest remembering
    expect(o.begin('p', 'a')).toBe('new')
    expect(o.begin('p', 'c')).toBe('done')
    expect(o.begin('p', 'd')).toBe('done')
    expect(o.begin('p', 'e')).toBe('done')
    expect(o.size).toBe(3)
  })

  it('holds exactly max ids across many rounds of the ring', () => {
    const o = new RecentOrigins(1000)
    for (let i = 0; i < 10_500; i++) o.add('p', `m-${i}`)
    expect(o.size).toBe(1000)
    expect(o.begin('p', 'm-9499')).toBe('new')
    expect(o.begin('p', 'm-9500')).toBe('done')
    expect(o.begin('p', 'm-10499')).toBe('done')
  })
})
