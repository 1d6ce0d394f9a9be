// Where this package's own files are (package.json, the bin, the shipped example cluster
// files), found by walking up from the running module: the same code runs as TypeScript from
// src/ (tests), as compiled JavaScript from dist/src/ (a checkout or an npm install), and from
// lib/src/ of the Raspberry Pi bundle, each at a different depth.
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { delimiter, dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export const packageName = 'geomirror';

export function findPackageRoot(fromUrl: string): string {
  let dir = dirname(fileURLToPath(fromUrl));
  for (;;) {
    const manifest = join(dir, 'package.json');
    if (existsSync(manifest) && (JSON.parse(readFileSync(manifest, 'utf8')) as { name?: unknown }).name === packageName) return dir;
    const up = dirname(dir);
    if (up === dir) throw new Error(`no package.json of ${packageName} above ${fileURLToPath(fromUrl)}; is the installation complete?`);
    dir = up;
  }
}

/** Root of the geomirror package this module belongs to. */
export const packageRoot = findPackageRoot(import.meta.url);

export interface PackageManifest {
  name: string;
  version: string;
  description: string;
}

export const packageManifest = JSON.parse(readFileSync(join(packageRoot, 'package.json'), 'utf8')) as PackageManifest;

function realpathOrUndefined(path: string): string | undefined {
  try {
    return realpathSync(path);
  } catch {
    return undefined;
  }
}

/**
 * How a user runs this geomirror from a shell, for hints we print: `geomirror` when the
 * `geomirror` on PATH is the script running now (a global install, the Pi bundle's link),
 * otherwise `npx geomirror` (after `npm ci` in a checkout the bin is not on PATH; npx finds it).
 */
export function shellCommand(argv1 = process.argv[1], pathEnv = process.env.PATH ?? ''): string {
  const running = argv1 === undefined ? undefined : realpathOrUndefined(argv1);
  if (running !== undefined) {
    for (const dir of pathEnv.split(delimiter)) {
      if (dir !== '' && realpathOrUndefined(join(dir, packageName)) === running) return packageName;
    }
  }
  return `npx ${packageName}`;
}
