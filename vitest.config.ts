import { defineConfig } from 'vitest/config'

export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['./test/global-setup.ts'],
    testTimeout: 60_000,
    hookTimeout: 60_000,
    // Scenario tests start real processes and brokers on a 2-core machine.
    fileParallelism: false,
    pool: 'forks',
  },
})
