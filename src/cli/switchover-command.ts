// `geomirror promote` and `geomirror demote` as --help shows them: names, options, help. The
// work (src/cli/switchover.ts, with the admin client and the config loader) is imported when
// the command runs, so `geomirror --help` does not load it (issue 19: --help in under 0.5 s).
import type { Command } from 'commander';
import { defaultClusterFile } from './defaults.js';
import type { RoleChangeCliOptions } from './switchover.js';

function register(program: Command, action: 'promote' | 'demote', description: string, example: string): void {
  const cmd = program
    .command(action)
    .description(description)
    .requiredOption('-s, --site <name>', action === 'promote' ? 'the standby to promote' : 'the primary to demote')
    .option('-c, --config <file>', 'the cluster file (the site\'s admin address and the cluster key)', defaultClusterFile)
    .option('-r, --reason <text>', 'why (kept in the failover history and logs)');
  if (action === 'promote') cmd.option('--force', 'promote even if the standby is not known to hold every acknowledged write (its primary never said in sync, or it was being resynced): acked writes it misses are LOST');
  cmd
    .addHelpText('after', `\nExamples:\n${example}\n\nExit code 1 when the site refuses (the reason is printed) or cannot be reached.`)
    .action(async (opts: RoleChangeCliOptions) => {
      const { roleChangeCommand } = await import('./switchover.js');
      await roleChangeCommand(action, opts);
    });
}

export function registerSwitchover(program: Command): void {
  register(program, 'demote', 'planned switchover, step 1: the primary drains its in-flight writes and waits as a mirror; once the standby is promoted it follows it as its standby', '  $ geomirror demote --site local --config targets/loopback/failover.yaml');
  register(program, 'promote', 'planned switchover, step 2: the standby becomes the primary (new epoch; the others are resynced from it)', '  $ geomirror promote --site backup --config targets/loopback/failover.yaml --reason "maintenance at local"');
}
