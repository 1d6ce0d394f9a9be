// `geomirror --help` right after npm ci lists the commands; each has --help with examples; and
// --help loads the command line only, not what the commands run.
import { execFile } from 'node:child_process';
import { mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { buildProgram } from '../../src/cli/program.js';
import { helpMayLoad, moduleTracer } from './module-trace.js';

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

  it('--help and each command\'s --help load commander and the command line only, not the commands\' work (yaml, X.509, cli-progress, the site, hal, the Pi flasher)', async () => {
    // What makes --help fast (issue 19: under 0.5 s installed) is what it does not load; this
    // checks that, not a time. The compiled bin runs, as an installed geomirror would.
    const dir = mkdtempSync(join(tmpdir(), 'geomirror-help-trace-'));
    try {
      const trace = moduleTracer(dir);
      const rootUrl = `${pathToFileURL(realpathSync(root)).href}/`;
      for (const args of [['--help'], ...commands.map((c) => [c, '--help']), ['pki', 'init', '--help']]) {
        const t = trace(process.env);
        const { stdout } = await run(process.execPath, ['bin/geomirror.mjs', ...args], { cwd: root, env: t.env });
        expect(stdout).toMatch(/^Usage: geomirror /);
        const loaded = t.resolved();
        expect(loaded, 'the trace saw the command line load').toContain(`${rootUrl}dist/src/cli/program.js`);
        expect([...new Set(loaded.filter((u) => !helpMayLoad(u, rootUrl)))], `geomirror ${args.join(' ')} loaded`).toEqual([]);
      }
      // The same trace and rule do see a command's work once it runs: keygen loads site/key.js.
      const t = trace(process.env);
      const { stdout } = await run(process.execPath, ['bin/geomirror.mjs', 'keygen'], { cwd: root, env: t.env });
      expect(stdout).toMatch(/^[0-9a-f]{64}\n$/);
      expect(t.resolved().filter((u) => !helpMayLoad(u, rootUrl))).toContain(`${rootUrl}dist/src/site/key.js`);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
