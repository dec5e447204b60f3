import { describe, expect, it } from 'vitest'
import { CompiledSchema, datasetSchemaSchema, parseTimestampUs, type Row } from '../../gateway/datasets.js'

const schema = datasetSchemaSchema.parse({
  timestamp: 'ts',
  tags: ['site'],
  fields: { temp: 'double', count: 'long', ok: 'boolean', note: 'string', at: 'timestamp', level: { type: 'double', required: true } }
})
const compiled = new CompiledSchema('weather', 1, schema, { maxBatch: 3, maxString: 10 })

function decode (value: unknown): { rows: Row[], reason: string | null, field?: string | undefined } {
  const rows: Row[] = []
  const r = compiled.decode(value, 'dev1', 5_000_000, rows)
  return { rows, reason: r?.reason ?? null, field: r?.field }
}

describe('schema validation', () => {
  it('turns a valid record into a row with ts in µs, device and typed columns', () => {
    const { rows, reason } = decode({ ts: 1_700_000_000_123, site: 'a', temp: 21.5, count: 3, ok: true, note: 'hi', at: '2024-01-01T00:00:00Z', level: 1 })
    expect(reason).toBeNull()
    expect(rows).toEqual([{ ts: 1_700_000_000_123_000, device: 'dev1', site: 'a', temp: 21.5, count: 3, ok: true, note: 'hi', at: 1_704_067_200_000_000, level: 1 }])
  })

  it('uses the arrival time when the record has no timestamp, and treats null as absent', () => {
    const { rows } = decode({ level: 2, temp: null })
    expect(rows).toEqual([{ ts: 5_000_000, device: 'dev1', level: 2 }])
  })

  it.each([
    [{ level: 1, temp: '20' }, 'wrong_type', '/temp'],
    [{ level: 1, count: 1.5 }, 'wrong_type', '/count'],
    [{ level: 1, count: 2 ** 60 }, 'out_of_range', '/count'],
    [{ level: 1, ok: 'true' }, 'wrong_type', '/ok'],
    [{ level: 1, site: 5 }, 'wrong_type', '/site'],
    [{ level: 1, note: 'x'.repeat(11) }, 'string_too_long', '/note'],
    [{ level: 1, device: 'spoof' }, 'unknown_field', '/device'],
    [{ level: 1, constructor: 1 }, 'unknown_field', '/constructor'],
    [{ temp: 1 }, 'missing_field', '/level'],
    [{ level: 1, ts: 'now' }, 'bad_timestamp', '/ts'],
    [{ level: 1, ts: '2024-01-01' }, 'bad_timestamp', '/ts'],
    [{ level: 1, ts: 1e20 }, 'bad_timestamp', '/ts'],
    [{ level: 1, at: true }, 'bad_timestamp', '/at'],
    [[{ level: 1 }, { level: 'x' }], 'wrong_type', '/1/level'],
    [[{ level: 1 }, { level: 1 }, { level: 1 }, { level: 1 }], 'batch_too_large', undefined],
    [[], 'empty_batch', undefined],
    [null, 'not_an_object', '/'],
    [7, 'not_an_object', '/']
  ])('refuses %j as %s', (value, reason, field) => {
    const r = decode(value)
    expect(r.reason).toBe(reason)
    expect(r.field).toBe(field)
  })

  it('parses ISO 8601 with offsets and microseconds, and epoch milliseconds', () => {
    expect(parseTimestampUs('2024-05-01T12:00:00.123456Z')).toBe(Date.UTC(2024, 4, 1, 12) * 1000 + 123_456)
    expect(parseTimestampUs('2024-05-01T14:00:00+02:00')).toBe(Date.UTC(2024, 4, 1, 12) * 1000)
    expect(parseTimestampUs(1.5)).toBe(1500)
    expect(parseTimestampUs('May 1, 2024')).toBeNaN()
    expect(parseTimestampUs(-1)).toBeNaN()
  })

  it('refuses schemas that shadow reserved columns or repeat a name', () => {
    expect(datasetSchemaSchema.safeParse({ fields: { ts: 'double' } }).success).toBe(false)
    expect(datasetSchemaSchema.safeParse({ tags: ['device'], fields: { x: 'double' } }).success).toBe(false)
    for (const own of ['_node', '_seq', '_idx']) expect(datasetSchemaSchema.safeParse({ fields: { [own]: 'long' } }).success, own).toBe(false)
    expect(datasetSchemaSchema.safeParse({ tags: ['a'], fields: { a: 'double' } }).success).toBe(false)
    expect(datasetSchemaSchema.safeParse({ timestamp: 'time', fields: { time: 'double' } }).success).toBe(false)
    expect(datasetSchemaSchema.safeParse({ fields: {} }).success).toBe(false)
    expect(datasetSchemaSchema.safeParse({ fields: { 'Bad-Name': 'double' } }).success).toBe(false)
    expect(datasetSchemaSchema.safeParse({ fields: { x: 'float' } }).success).toBe(false)
  })

  it('takes a tag or a string or long field as the message id, and reads it from a payload', () => {
    for (const id of ['n', 'site', 'code']) expect(datasetSchemaSchema.safeParse({ messageId: id, tags: ['site'], fields: { n: 'long', code: 'string' } }).success, id).toBe(true)
    for (const id of ['x', 'missing']) expect(datasetSchemaSchema.safeParse({ messageId: id, fields: { x: 'double' } }).success, id).toBe(false)
    const s = new CompiledSchema('meter', 1, datasetSchemaSchema.parse({ messageId: 'n', fields: { n: 'long', v: 'double' } }), { maxBatch: 10, maxString: 10 })
    expect(s.messageIdOf({ n: 7, v: 1 })).toBe('meter/7')
    expect(s.messageIdOf([{ n: 7 }, { n: 8 }])).toBe('meter/7#2') // a batch: its first id and its size
    expect(s.messageIdOf({ v: 1 })).toBeUndefined() // no id: every such message is new
    expect(compiled.messageIdOf({ temp: 1 })).toBeUndefined() // a dataset without messageId
  })
})
