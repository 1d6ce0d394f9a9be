// `geomirror start` as --help shows it: name, options, help. The work (src/cli/start.ts, with
// the config loader, the PKI and the status client) is imported when the command runs, so
// `geomirror --help` does not load it (issue 19: --help in under 0.5 s).
import type { Command } from 'commander';
import { restartPolicyDefault } from './cluster.js';
import { defaultClusterFile } from './defaults.js';

export function registerStart(program: Command): void {
  program
    .command('start')
    .description('run the demo cluster on loopback files (what npm start runs): create files and key, start every site, show live status')
    .option('-c, --config <file>', 'the cluster file', defaultClusterFile)
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror start                       # what npm start runs
  $ geomirror start --config targets/loopback/mixed.yaml

First run creates sparse loopback files and the cluster key next to the cluster file. Site
logs go to data/cluster.log beside it; a site that dies is named on the terminal (with its
exit code or signal) and restarted, with backoff, at most ${restartPolicyDefault.attemptsMax} times in a row. Ctrl-C stops
every site; a second Ctrl-C kills them.`,
    )
    .action(async (opts: { config: string }) => {
      const { runStart } = await import('./start.js');
      process.exitCode = await runStart(opts.config);
    });
}
