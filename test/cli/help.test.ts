// `geomirror --help` right after npm ci lists the commands; each has --help with examples.
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli/program.js';

const run = promisify(execFile);
const root = fileURLToPath(new URL('../../', import.meta.url));
const commands = ['promote', 'demote', 'start', 'cluster', 'site', 'status', 'keygen', 'verify', 'devices', 'flash', 'pki', 'check', 'events'];

describe('geomirror --help', () => {
  it('npx geomirror --help lists every command', async () => {
    const { stdout } = await run('npx', ['--no-install', 'geomirror', '--help'], { cwd: root });
    expect(stdout).toMatch(/^Usage: geomirror \[options\] \[command\]/);
    for (const c of commands) expect(stdout).toMatch(new RegExp(`^  ${c} `, 'm'));
  });

  it('every command has --help with examples', () => {
    const program = buildProgram();
    for (const name of commands) {
      const cmd = program.commands.find((c) => c.name() === name)!;
      let text = '';
      cmd.configureOutput({ writeOut: (s) => void (text += s) });
      cmd.outputHelp();
      expect(text).toContain(`Usage: geomirror ${name} [options]`);
      expect(text).toMatch(new RegExp(`Examples:\\n  \\$ geomirror ${name}`));
    }
    expect(program.commands.map((c) => c.name()).sort()).toEqual([...commands].sort());
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
