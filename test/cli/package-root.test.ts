// Where the package's files are, and how to tell the user to run geomirror: `geomirror` only
// when the one on PATH is the script running now, else `npx geomirror` (after `npm ci` the bin
// is not on PATH).
import { mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { findPackageRoot, packageManifest, packageRoot, shellCommand } from '../../src/cli/package-root.js';

const dir = mkdtempSync(join(tmpdir(), 'geomirror-pkgroot-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('package root', () => {
  it('is the folder of geomirror package.json above the module, at any depth', () => {
    expect(packageRoot).toBe(fileURLToPath(new URL('../..', import.meta.url)).replace(/\/$/, ''));
    expect(packageManifest.name).toBe('geomirror');
    const deep = join(dir, 'pkg', 'lib', 'src', 'cli');
    mkdirSync(deep, { recursive: true });
    writeFileSync(join(dir, 'pkg', 'package.json'), '{"name":"other"}');
    writeFileSync(join(dir, 'pkg', 'lib', 'package.json'), '{"name":"geomirror","version":"9.9.9"}');
    expect(findPackageRoot(`file://${join(deep, 'main.js')}`)).toBe(join(dir, 'pkg', 'lib'));
    expect(() => findPackageRoot(`file://${join(dir, 'nowhere.js')}`)).toThrow(/no package.json of geomirror above/);
  });
});

describe('shellCommand', () => {
  it('says geomirror when PATH leads to the running script, npx geomirror otherwise', () => {
    const script = join(dir, 'geomirror.mjs');
    writeFileSync(script, '');
    const bin = join(dir, 'bin');
    const otherBin = join(dir, 'other-bin');
    mkdirSync(bin);
    mkdirSync(otherBin);
    symlinkSync(script, join(bin, 'geomirror'));
    writeFileSync(join(otherBin, 'geomirror'), ''); // another geomirror: not the one running
    expect(shellCommand(script, `/nonexistent:${bin}`)).toBe('geomirror');
    expect(shellCommand(join(bin, 'geomirror'), bin)).toBe('geomirror');
    expect(shellCommand(script, otherBin)).toBe('npx geomirror');
    expect(shellCommand(script, '')).toBe('npx geomirror');
    expect(shellCommand(undefined, bin)).toBe('npx geomirror');
  });
});
