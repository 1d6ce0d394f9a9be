import { defineConfig } from 'vitest/config';

// One config for the whole suite. Multi-process tests spawn children with tsx, so
// workers are forks (child_process-friendly) and timeouts are generous: these
// tests check behaviour, never timing.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
