// keygen: 32 random bytes as hex, written 0600, never overwritten without --force.
import { execFile } from 'node:child_process';
import { chmodSync, lstatSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, describe, expect, it } from 'vitest';
import { generateKeyHex, writeKeyFile } from '../../src/site/key.js';

const run = promisify(execFile);
const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-keygen-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('keygen', () => {
  it('makes distinct 32-byte hex keys', () => {
    const a = generateKeyHex();
    expect(a).toMatch(/^[0-9a-f]{64}$/);
    expect(generateKeyHex()).not.toBe(a);
  });

  it('writes a 0600 file in a new folder and refuses to overwrite it without force', () => {
    const path = join(dir, 'sub', 'cluster.key');
    writeKeyFile(path);
    const first = readFileSync(path, 'utf8');
    expect(first).toMatch(/^[0-9a-f]{64}\n$/);
    expect(statSync(path).mode & 0o777).toBe(0o600);
    expect(() => writeKeyFile(path)).toThrow(`${path} already exists`);
    expect(readFileSync(path, 'utf8')).toBe(first);
    chmodSync(path, 0o644);
    writeKeyFile(path, true);
    expect(readFileSync(path, 'utf8')).not.toBe(first);
    expect(statSync(path).mode & 0o777).toBe(0o600);
  });

  it('never writes through a symlink, with or without --force (issue 17 item 8)', async () => {
    const victim = join(dir, 'victim.txt');
    writeFileSync(victim, 'precious\n');
    const link = join(dir, 'link.key');
    symlinkSync(victim, link);
    expect(() => writeKeyFile(link, true)).toThrow(/is a symbolic link; refusing/);
    const r = await run(process.execPath, [bin, 'keygen', '--out', link, '--force']).then(() => undefined, (e: { code: number; stderr: string }) => e);
    expect(r?.code).toBe(1);
    expect(r?.stderr).toContain('is a symbolic link');
    expect(readFileSync(victim, 'utf8')).toBe('precious\n');
    expect(lstatSync(link).isSymbolicLink()).toBe(true);
    // A dangling link too: O_NOFOLLOW|O_EXCL would not create its target.
    const dangling = join(dir, 'dangling.key');
    symlinkSync(join(dir, 'nowhere', 'x'), dangling);
    expect(() => writeKeyFile(dangling)).toThrow(/symbolic link/);
  });

  it('works from the command line', async () => {
    const kept = join(dir, 'kept.key');
    const forced = join(dir, 'forced.key');
    writeFileSync(kept, 'keep me\n');
    writeFileSync(forced, 'replace me\n');
    const [printed, refused] = await Promise.all([
      run(process.execPath, [bin, 'keygen']),
      run(process.execPath, [bin, 'keygen', '--out', kept]).then(
        () => undefined,
        (e: { code: number; stderr: string }) => e,
      ),
      run(process.execPath, [bin, 'keygen', '--out', forced, '--force']),
    ]);
    expect(printed.stdout).toMatch(/^[0-9a-f]{64}\n$/);
    expect(refused?.code).toBe(1);
    expect(refused?.stderr).toContain(`geomirror keygen: ${kept} already exists`);
    expect(readFileSync(kept, 'utf8')).toBe('keep me\n');
    expect(readFileSync(forced, 'utf8')).toMatch(/^[0-9a-f]{64}\n$/);
  });
});
