// Regenerates the settings lists of .env.example and config/streamgate.yaml from the config schema
// (names and defaults) and the README's Configuration table (what each means): `npm run config:docs`.
// Each file keeps its own header, everything above its first setting's description.
import fs from 'node:fs'
import path from 'node:path'
import { configSchema } from '../../config/index.js'

const root = path.join(import.meta.dirname, '../..')
const readme = fs.readFileSync(path.join(root, 'README.md'), 'utf8')
const rows = readme.split('\n').filter((l) => l.startsWith('| `STREAMGATE_')).map((l) => l.split('|').map((c) => c.trim()))

/** The README row documenting `key` (directly, or as `…_SUFFIX` after a sibling). */
function meaning (key: string): string {
  const row = rows.find((cells) => {
    const names = [...cells[1]!.matchAll(/`([^`]+)`/g)].map((m) => m[1]!)
    const first = names[0]!
    return names.some((n) => (n.startsWith('…_') ? first.slice(0, first.lastIndexOf('_')) + n.slice(1) : n) === key)
  })
  if (row === undefined) throw new Error(`${key} is not in the README's Configuration table`)
  return row[3]!.replace(/`/g, '')
}

function defaultOf (key: string): string {
  const r = (configSchema.shape as Record<string, { safeParse: (v: unknown) => { success: boolean, data?: unknown } }>)[key]!.safeParse(undefined)
  return r.success && r.data !== undefined ? String(r.data) : ''
}

const yamlValue = (v: string): string => v === '' ? '' : /^-?\d+$/.test(v) || v === 'true' || v === 'false' ? ` ${v}` : ` "${v}"`

function rewrite (file: string, line: (key: string, value: string) => string): void {
  const text = fs.readFileSync(path.join(root, file), 'utf8')
  const keys = Object.keys(configSchema.shape)
  const start = text.indexOf(`# ${meaning(keys[0]!)}\n`)
  if (start < 0) throw new Error(`${file}: cannot find where the settings start`)
  const body = keys.map((k) => `# ${meaning(k)}\n${line(k, defaultOf(k))}`).join('\n')
  fs.writeFileSync(path.join(root, file), text.slice(0, start) + body + '\n\n')
}

rewrite('.env.example', (k, v) => `# ${k}=${v}`)
rewrite('config/streamgate.yaml', (k, v) => `# ${k}:${yamlValue(v)}`)
