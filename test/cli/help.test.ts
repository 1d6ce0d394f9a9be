// `geomirror --help` right after npm ci lists the commands; each has --help with examples.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../', import.meta.url));
const commands = ['cluster', 'site', 'status', 'keygen'];

describe('geomirror --help', () => {
  it('npx geomirror --help lists every command', async () => {
    const { stdout } = await run('npx', ['--no-install', 'geomirror', '--help'], { cwd: root });
    expect(stdout).toMatch(/^Usage: geomirror \[options\] \[command\]/);
    for (const c of commands) expect(stdout).toMatch(new RegExp(`^  ${c} `, 'm'));
  });

  it('every command has --help with examples', async () => {
    const outs = await Promise.all(commands.map((c) => run(process.execPath, ['bin/geomirror.mjs', c, '--help'], { cwd: root })));
    outs.forEach(({ stdout }, i) => {
      expect(stdout).toContain(`Usage: geomirror ${commands[i]} [options]`);
      expect(stdout).toMatch(new RegExp(`Examples:\\n  \\$ geomirror ${commands[i]}`));
    });
  });

  it('an unknown command fails with a pointer to --help', async () => {
    const err = await run(process.execPath, ['bin/geomirror.mjs', 'clustr'], { cwd: root }).then(
      () => undefined,
      (e: { code: number; stderr: string }) => e,
    );
    expect(err?.code).toBe(1);
    expect(err?.stderr).toContain("unknown command 'clustr'");
    expect(err?.stderr).toContain('(Did you mean cluster?)');
  });
});
