// `geomirror status` as --help shows it: name, options, help. The work (src/cli/status.ts,
// with the admin client, the config loader and cli-progress) is imported when the command
// runs, so `geomirror --help` does not load it (issue 19: --help in under 0.5 s).
import type { Command } from 'commander';
import { defaultAdmin } from './defaults.js';
import type { StatusCliOptions } from './status.js';

export function registerStatus(program: Command): void {
  program
    .command('status')
    .description('show each site: role, epoch, last seq acked, in sync / degraded / resyncing, cache, link, RTT')
    .option('-a, --admin <host:port>', `query one site's admin address (default ${defaultAdmin} when no --config)`)
    .option('-c, --config <file>', 'query every site of a cluster file that has an admin address (and authenticate with its CA and key; with --admin: only that address)')
    .option('--json', 'print the raw /status answers as JSON')
    .option('-w, --watch', 'redraw every second, with progress bars for resyncs and verifies')
    .option('--interval <ms>', 'with --watch: milliseconds between redraws', '1000')
    .option('--count <n>', 'with --watch: stop after n redraws (default: until Ctrl-C)')
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror status                                          # the npm start cluster
  $ geomirror status --config targets/loopback/cluster.yaml   # every site of a file
  $ geomirror status --admin 10.0.0.5:9400 --config cluster.yaml --json
  $ geomirror status --config targets/loopback/cluster.yaml --watch

The admin port is HTTPS and authenticated: status makes a one-time token from the cluster key
(the file's secret:), or uses the client certificate in GEOMIRROR_CLIENT_CERT_DIR.

Exit code 1 when a site does not answer (not with --watch, which shows it and goes on).`,
    )
    .action(async (opts: StatusCliOptions) => {
      const { statusCommand } = await import('./status.js');
      await statusCommand(opts);
    });
}
