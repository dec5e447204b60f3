import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Integration suites share the machine's services and two cores: run files one or two at a time.
    maxWorkers: 2,
    fileParallelism: true,
    // In CI a JSON report as well: .ci/run prints its closing 'N passed, N failed' line from it.
    reporters: process.env.CI ? ['default', 'json'] : ['default'],
    ...(process.env.CI ? { outputFile: { json: 'test-results.json' } } : {})
  }
})
