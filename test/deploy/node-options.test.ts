// The Node.js options of bin/node-options.ts are on every command line that starts the gateway.
import { execFileSync } from 'node:child_process'
import fs from 'node:fs'
import path from 'node:path'
import { describe, expect, it } from 'vitest'
import { NODE_OPTIONS } from '../../bin/node-options.js'

const root = path.join(import.meta.dirname, '../..')

describe('Node.js options (bin/node-options.ts)', () => {
  it('npm start and the image CMD pass every one, before the script', () => {
    const start = (JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { scripts: Record<string, string> }).scripts.start!
    expect(start).toContain(`node ${NODE_OPTIONS.join(' ')} dist/bin/streamgate.js`)
    const cmd = fs.readFileSync(path.join(root, 'Dockerfile'), 'utf8').split('\n').find((l) => l.startsWith('CMD '))!
    expect(JSON.parse(cmd.slice(4))).toEqual(['node', ...NODE_OPTIONS, 'dist/bin/streamgate.js'])
  })

  // Threads counted from /proc: Linux only.
  it.runIf(fs.existsSync('/proc/self/task'))('--v8-pool-size=1 gives V8 one worker thread, three fewer than Node\'s default', () => {
    const threads = (args: string[]): number => Number(execFileSync(process.execPath, [...args, '-e',
      "setTimeout(() => console.log(require('fs').readdirSync('/proc/self/task').length), 200)"], { encoding: 'utf8', env: { ...process.env, NODE_OPTIONS: '' } }))
    expect(threads(['--v8-pool-size=1'])).toBe(threads([]) - 3)
    expect(threads(['--v8-pool-size=1'])).toBe(threads(['--v8-pool-size=4']) - 3)
  })
})
