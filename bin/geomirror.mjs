#!/usr/bin/env node
// Entry point of the `geomirror` command: runs the compiled JavaScript in dist/ (npm run build;
// npm ci, npm start and npm test build it first). Sites run compiled JavaScript; tsx is for
// development only. In a source checkout (scripts/ next to dist/; an installed package has no
// scripts/) a dist/ older than the sources is refused, never silently run.
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const buildState = new URL('../scripts/build-state.mjs', import.meta.url);
if (existsSync(buildState)) {
  const { staleReason } = await import(buildState.href);
  const reason = staleReason(fileURLToPath(new URL('..', import.meta.url)));
  if (reason !== undefined) {
    process.stderr.write(`geomirror: ${reason}; run \`npm run build\` first (npm start and npm test do it)\n`);
    process.exit(1);
  }
}
await import('../dist/src/cli/main.js');
