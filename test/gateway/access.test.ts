import { describe, expect, it } from 'vitest'
import { AccessState, hashKey, type Action } from '../../gateway/access.js'
import { classifyFilter, parsePublishTopic } from '../../gateway/topics.js'

const now = Date.parse('2026-01-01T00:00:00Z')
function state (): AccessState {
  const s = new AccessState()
  for (const [id, kind] of [['admin', 'admin'], ['dev1', 'device'], ['dev2', 'device'], ['svc', 'service'], ['off', 'device']] as const) {
    s.putPrincipal({ id, kind, description: '', disabled: id === 'off', createdAt: '', updatedAt: '' })
  }
  s.putKey({ id: 'k1', principal: 'dev1', hash: hashKey('secret-1'), description: '', createdAt: '', expiresAt: null, revokedAt: null })
  s.putKey({ id: 'k2', principal: 'dev1', hash: hashKey('secret-2'), description: '', createdAt: '', expiresAt: '2025-01-01T00:00:00Z', revokedAt: null })
  s.putKey({ id: 'k3', principal: 'dev1', hash: hashKey('secret-3'), description: '', createdAt: '', expiresAt: null, revokedAt: '2025-01-01T00:00:00Z' })
  s.putKey({ id: 'k4', principal: 'off', hash: hashKey('secret-4'), description: '', createdAt: '', expiresAt: null, revokedAt: null })
  s.setDatasetGrants('weather', [
    { dataset: 'weather', principal: 'dev1', actions: ['publish'] },
    { dataset: 'weather', principal: 'svc', actions: ['subscribe', 'query'], devices: ['+'] },
    { dataset: 'weather', principal: 'off', actions: ['publish', 'subscribe'] }
  ])
  s.setDatasetGrants('fleet', [{ dataset: 'fleet', principal: 'svc', actions: ['publish'], devices: ['+'] }])
  return s
}

describe('authentication', () => {
  it.each([
    ['dev1', 'secret-1', true, undefined],
    ['dev1', 'secret-9', false, 'bad_key'],
    ['dev2', 'secret-1', false, 'bad_key'],
    ['ghost', 'secret-9', false, 'unknown_principal'],
    ['dev1', 'secret-2', false, 'expired'],
    ['dev1', 'secret-3', false, 'revoked'],
    ['off', 'secret-4', false, 'disabled']
  ])('%s with %s → %s %s', (user, secret, ok, reason) => {
    const r = state().authenticate(user, secret, now)
    expect(r.ok).toBe(ok)
    if (!r.ok) expect(r.reason).toBe(reason)
  })
})

describe('ACL decisions (deny by default)', () => {
  const cases: [string, Action, string, boolean][] = [
    ['dev1', 'publish', 'weather', true],
    ['dev1', 'subscribe', 'weather', false],
    ['dev1', 'query', 'weather', false],
    ['dev1', 'publish', 'fleet', false],
    ['dev2', 'publish', 'weather', false],
    ['svc', 'subscribe', 'weather', true],
    ['svc', 'publish', 'weather', false],
    ['off', 'publish', 'weather', false],
    ['ghost', 'publish', 'weather', false],
    ['admin', 'manage', 'anything', true]
  ]
  it.each(cases)('%s %s %s → %s', (p, a, d, expected) => {
    expect(state().can(p, a, d)).toBe(expected)
  })

  it.each([
    ['dev1', 'weather', 'dev1', true],
    ['dev1', 'weather', 'dev2', false],
    ['svc', 'fleet', 'anything', true],
    ['svc', 'weather', 'svc', false],
    ['admin', 'weather', 'x', true]
  ])('%s publishes to %s as %s → %s', (p, d, dev, expected) => {
    expect(state().canPublish(p, d, dev)).toBe(expected)
  })

  it.each([
    ['svc', 'datasets/weather/#', true],
    ['svc', 'datasets/weather/+/temp', true],
    ['svc', 'datasets/weather', true],
    ['svc', 'datasets/fleet/#', false],
    ['svc', 'datasets/+/#', false],
    ['svc', '#', false],
    ['svc', '+/weather/#', false],
    ['svc', '$SYS/#', false],
    ['svc', '$share/g/datasets/weather/#', false],
    ['admin', '$SYS/#', true],
    ['admin', '#', true],
    ['off', 'datasets/weather/#', false]
  ])('%s subscribes %s → %s', (p, filter, expected) => {
    expect(state().canSubscribe(p, classifyFilter(filter))).toBe(expected)
  })

  it('takes revocations into account at once', () => {
    const s = state()
    s.setDatasetGrants('weather', [])
    expect(s.can('svc', 'subscribe', 'weather')).toBe(false)
    expect(s.canPublish('dev1', 'weather', 'dev1')).toBe(false)
  })
})

describe('topic grammar', () => {
  it.each([
    ['datasets/weather/dev1', { dataset: 'weather', device: 'dev1' }],
    ['datasets/weather/dev1/a/b', { dataset: 'weather', device: 'dev1' }],
    ['datasets/weather/', null],
    ['datasets/weather', null],
    ['datasets//dev1', null],
    ['datasets/Weather/dev1', null],
    ['datasets/weather/dev.1', null],
    ['datasets/weather/$dev', null],
    ['other/weather/dev1', null]
  ])('%s → %j', (topic, expected) => {
    expect(parsePublishTopic(topic)).toEqual(expected)
  })
})
