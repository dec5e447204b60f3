// Slots bound how many queries the embedded store runs at once (STREAMGATE_QUERY_CONCURRENCY): the
// others wait in turn, and a wait longer than the query timeout is refused.
import { describe, expect, it } from 'vitest'
import { Slots } from '../../gateway/limits.js'
import { sleep } from '../helpers.js'

const timeoutError = (): Error => new Error('waited too long')

describe('Slots', () => {
  it('lets `size` holders in at once and the next waiter in, in arrival order, as each leaves', async () => {
    const slots = new Slots(2)
    const order: string[] = []
    await slots.acquire(1000, timeoutError)
    await slots.acquire(1000, timeoutError)
    const third = slots.acquire(1000, timeoutError).then(() => order.push('third'))
    const fourth = slots.acquire(1000, timeoutError).then(() => order.push('fourth'))
    await sleep(20)
    expect(order).toEqual([])
    slots.release()
    await third
    expect(order).toEqual(['third'])
    slots.release()
    await fourth
    expect(order).toEqual(['third', 'fourth'])
  })

  it('refuses a wait longer than its timeout, and a slot freed later goes to the next waiter', async () => {
    const slots = new Slots(1)
    await slots.acquire(1000, timeoutError)
    const started = performance.now()
    await expect(slots.acquire(50, timeoutError)).rejects.toThrow('waited too long')
    expect(performance.now() - started).toBeGreaterThanOrEqual(45)
    const next = slots.acquire(1000, timeoutError)
    slots.release()
    await next // the timed-out waiter did not take the slot
    slots.release()
    await slots.acquire(10, timeoutError) // free again
  })
})
