#!/usr/bin/env node
// Builds dist/ (tsc -b tsconfig.build.json) when it is older than its sources: what `npm ci`
// (prepare), `npm start`, `npm test`, vitest's global setup and the benches run first, so every
// site and CLI child process runs current code. `--prune` first deletes compiled files whose
// source is gone (npm pack: no JavaScript of deleted sources ships; cheaper than a build from
// scratch). `npm run build` always runs tsc.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync, rmSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { buildConfig, staleReason } from './build-state.mjs';

const root = fileURLToPath(new URL('..', import.meta.url));

/** Deletes dist/X.js and dist/X.js.map whose X.ts no longer exists. */
function pruneOrphans(dir) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      pruneOrphans(p);
      continue;
    }
    const m = /^(.*)\.js(\.map)?$/.exec(relative(join(root, 'dist'), p));
    if (m && !existsSync(join(root, `${m[1]}.ts`))) {
      process.stderr.write(`geomirror build: removing ${relative(root, p)} (its source is gone)\n`);
      rmSync(p);
    }
  }
}

if (process.argv.includes('--prune')) pruneOrphans(join(root, 'dist'));
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
