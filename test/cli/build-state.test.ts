// Children run compiled JavaScript, so a dist/ older than its sources must never run silently:
// scripts/build-state.mjs names the first newer source, and bin/geomirror.mjs in a checkout
// refuses to start with that reason. Checked on a small copy of the layout, never on this
// checkout's own dist/ (other tests' children run it).
import { spawnSync } from 'node:child_process';
import { copyFileSync, mkdirSync, mkdtempSync, rmSync, utimesSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { buildInputs, staleReason } from '../../scripts/build-state.mjs';

const repo = fileURLToPath(new URL('../../', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'gm-build-state-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

function file(rel: string, text: string, mtimeS: number): void {
  mkdirSync(join(root, rel, '..'), { recursive: true });
  writeFileSync(join(root, rel), text);
  utimesSync(join(root, rel), mtimeS, mtimeS);
}

describe('build state', () => {
  // The layout of this repository in small: the real tsconfig.build.json and bin.
  copyFileSync(join(repo, 'tsconfig.build.json'), join(root, 'tsconfig.build.json'));
  utimesSync(join(root, 'tsconfig.build.json'), 1000, 1000);
  file('tsconfig.json', '{}', 1000);
  file('src/cli/main.ts', 'export {};', 1000);
  file('hal/x/deep.ts', 'export {};', 1000);
  file('targets/rpi/flash.ts', 'export {};', 1000);
  file('targets/rpi/build.ts', 'export {};', 5000); // excluded from the build: never makes it stale
  file('targets/rpi/sub/ignored.ts', 'export {};', 5000); // targets/rpi/*.ts is not recursive
  file('test/x.test.ts', 'export {};', 5000); // not a build input
  file('dist/src/cli/main.js', "process.stdout.write('compiled main ran\\n');", 1000);
  mkdirSync(join(root, 'bin'));
  mkdirSync(join(root, 'scripts'));
  copyFileSync(join(repo, 'bin', 'geomirror.mjs'), join(root, 'bin', 'geomirror.mjs'));
  copyFileSync(join(repo, 'scripts', 'build-state.mjs'), join(root, 'scripts', 'build-state.mjs'));
  const runBin = () => spawnSync(process.execPath, [join(root, 'bin', 'geomirror.mjs')], { encoding: 'utf8' });

  it('lists the build inputs from tsconfig.build.json', () => {
    expect(buildInputs(root).map((p) => p.slice(root.length + 1)).sort()).toEqual(['hal/x/deep.ts', 'src/cli/main.ts', 'targets/rpi/flash.ts', 'tsconfig.build.json', 'tsconfig.json']);
  });

  it('is stale without a build, current after one, stale again when a source changes; the bin refuses while stale', () => {
    expect(staleReason(root)).toBe('dist/ has not been built');
    expect(runBin().stderr).toContain('geomirror: dist/ has not been built; run `npm run build` first');
    file('dist/.tsbuildinfo', '{}', 2000);
    expect(staleReason(root)).toBeUndefined();
    const ok = runBin();
    expect([ok.status, ok.stdout]).toEqual([0, 'compiled main ran\n']);
    utimesSync(join(root, 'hal/x/deep.ts'), 3000, 3000);
    expect(staleReason(`${root}/`)).toBe('dist/ is older than hal/x/deep.ts');
    const refused = runBin();
    expect(refused.status).toBe(1);
    expect(refused.stdout).toBe('');
    expect(refused.stderr).toBe('geomirror: dist/ is older than hal/x/deep.ts; run `npm run build` first (npm start and npm test do it)\n');
  });
});
