#!/usr/bin/env node
// Builds dist/ (tsc -b tsconfig.build.json) when it is older than its sources: what `npm ci`
// (prepare), `npm start`, `npm test`, vitest's global setup and the benches run first, so every
// site and CLI child process runs current code. `--clean` empties dist/ and builds from scratch
// (npm pack: no JavaScript of deleted sources ships). `npm run build` always runs tsc.
import { execFileSync } from 'node:child_process';
import { rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildConfig, staleReason } from './build-state.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));
const clean = process.argv.includes('--clean');

if (clean) rmSync(join(root, 'dist'), { recursive: true, force: true });
const reason = staleReason(root);
if (reason !== undefined) {
  let tsc;
  try {
    tsc = join(dirname(createRequire(import.meta.url).resolve('typescript/package.json')), 'bin', 'tsc');
  } catch {
    process.stderr.write(`geomirror build: ${reason}, and TypeScript is not installed to build it; run \`npm ci\` (it installs the dev dependencies and builds)\n`);
    process.exit(1);
  }
  process.stderr.write(`geomirror build: ${reason}; compiling (tsc -b ${buildConfig})\n`);
  try {
    execFileSync(process.execPath, [tsc, '-b', buildConfig], { cwd: root, stdio: 'inherit' });
  } catch {
    process.stderr.write('geomirror build: tsc failed (errors above); dist/ is not current\n');
    process.exit(1);
  }
  const still = staleReason(root);
  if (still !== undefined) {
    process.stderr.write(`geomirror build: after tsc, ${still}; was a file changed during the build? run it again\n`);
    process.exit(1);
  }
}
