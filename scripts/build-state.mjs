// Is dist/ (the compiled JavaScript every site and CLI process runs) older than its sources?
// Used by bin/geomirror.mjs in a source checkout, to refuse running stale code, and by
// scripts/build.mjs, to skip the compiler when nothing changed (a check costs a few ms; a tsc
// run that finds nothing to do costs about a second).
//
// The inputs are the `include`/`exclude` of tsconfig.build.json (folders recursively, or
// `folder/*.ts`), plus both tsconfig files. The stamp is dist/.tsbuildinfo, which `tsc -b`
// rewrites or touches on every build, also one that finds the outputs up to date.
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join, resolve } from 'node:path';

export const buildConfig = 'tsconfig.build.json';
export const stampFile = join('dist', '.tsbuildinfo');

/** tsconfig files may hold comments; only whole-line `//` comments are used in ours. */
function readJsonc(path) {
  return JSON.parse(readFileSync(path, 'utf8').replace(/^\s*\/\/.*$/gm, ''));
}

function tsFiles(dir, recursive, out) {
  let entries;
  try {
    entries = readdirSync(dir, { withFileTypes: true });
  } catch {
    return;
  }
  for (const e of entries) {
    const p = join(dir, e.name);
    if (e.isDirectory()) {
      if (recursive) tsFiles(p, true, out);
    } else if (e.name.endsWith('.ts')) out.push(p);
  }
}

/** Every file whose change makes dist/ stale, relative to root. */
export function buildInputs(rootDir) {
  const root = resolve(rootDir);
  const cfg = readJsonc(join(root, buildConfig));
  const exclude = new Set((cfg.exclude ?? []).map((p) => join(root, p)));
  const out = [];
  for (const pattern of cfg.include) {
    if (pattern.endsWith('/*.ts')) tsFiles(join(root, pattern.slice(0, -'/*.ts'.length)), false, out);
    else tsFiles(join(root, pattern), true, out);
  }
  return [join(root, 'tsconfig.json'), join(root, buildConfig), ...out.filter((p) => !exclude.has(p))];
}

/** Why dist/ under root is stale (a sentence naming the file), or undefined when it is current. */
export function staleReason(rootDir) {
  const root = resolve(rootDir);
  let stampMs;
  try {
    stampMs = statSync(join(root, stampFile)).mtimeMs;
  } catch {
    return 'dist/ has not been built';
  }
  for (const input of buildInputs(root)) {
    if (statSync(input).mtimeMs > stampMs) return `dist/ is older than ${input.slice(root.length + 1)}`;
  }
  return undefined;
}
