// Which modules a geomirror process loads: a resolve hook, registered with --import through
// NODE_OPTIONS (so it reaches the node that an installed `geomirror` shim starts, too),
// appends every URL the process resolves to a file. It sees each `import` (and the package
// entry an ES module imports, CommonJS or not); what a CommonJS package requires inside itself
// is not seen, so a package is judged by its entry.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

export interface ModuleTrace {
  /** The environment to run the traced process with. */
  env: NodeJS.ProcessEnv;
  /** The URLs it resolved, in order (call after it exited). */
  resolved(): string[];
}

/** Writes the hook into `dir`; each call of the returned function traces one more process into its own file. */
export function moduleTracer(dir: string): (env: NodeJS.ProcessEnv) => ModuleTrace {
  writeFileSync(join(dir, 'trace-hooks.mjs'), "import { appendFileSync } from 'node:fs';\nexport async function resolve(s, c, next) { const r = await next(s, c); appendFileSync(process.env.GEOMIRROR_TRACE, r.url + '\\n'); return r; }\n");
  writeFileSync(join(dir, 'trace.mjs'), "import { register } from 'node:module';\nregister('./trace-hooks.mjs', import.meta.url);\n");
  const importUrl = pathToFileURL(join(dir, 'trace.mjs')).href;
  let n = 0;
  return (env) => {
    const file = join(dir, `resolved-${n++}.txt`);
    writeFileSync(file, '');
    return {
      env: { ...env, GEOMIRROR_TRACE: file, NODE_OPTIONS: `--import=${importUrl}` },
      resolved: () => readFileSync(file, 'utf8').split('\n').filter(Boolean),
    };
  };
}

/**
 * What `geomirror --help` (and `geomirror X --help`) may load from the package at `rootUrl`:
 * node's own modules, commander, the bin (and scripts/build-state.mjs it runs in a checkout),
 * the command line's modules under dist/src/cli/, and site/checksums.js (verify's help names
 * its digest; it imports node:crypto only). Everything else (yaml, @peculiar/x509, cli-progress,
 * pino, usb, serialport, the config loader, the site, hal, the Pi flasher) belongs to the
 * commands' work and is loaded when a command runs (issue 19: --help in under 0.5 s).
 */
export function helpMayLoad(url: string, rootUrl: string): boolean {
  if (url.startsWith('node:')) return true;
  if (!url.startsWith(rootUrl)) return false;
  const rel = url.slice(rootUrl.length);
  if (rel.startsWith('node_modules/')) return rel.startsWith('node_modules/commander/');
  return /^(bin\/geomirror\.mjs|scripts\/build-state\.mjs|dist\/src\/cli\/[^/]+\.js|dist\/src\/site\/checksums\.js)$/.test(rel);
}
