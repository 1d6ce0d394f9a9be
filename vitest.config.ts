import { defineConfig } from 'vitest/config';

// One config for the whole suite. Tests import the TypeScript sources; the sites and CLI
// processes that multi-process tests spawn run the compiled dist/, which the global setup
// builds first. Workers are forks (child_process-friendly) and timeouts are generous: these
// tests check behaviour, never timing.
export default defineConfig({
  test: {
    include: ['test/**/*.test.ts'],
    globalSetup: ['test/global-setup.ts'],
    pool: 'forks',
    testTimeout: 120_000,
    hookTimeout: 60_000,
    reporters: ['default'],
  },
});
