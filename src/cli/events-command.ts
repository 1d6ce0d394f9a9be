// `geomirror events` as --help shows it: name, options, help. The work (src/cli/events.ts,
// with the admin client and the config loader) is imported when the command runs, so
// `geomirror --help` does not load it (issue 19: --help in under 0.5 s).
import type { Command } from 'commander';
import { defaultAdmin } from './defaults.js';
import type { EventsCliOptions } from './events.js';

export function registerEvents(program: Command): void {
  program
    .command('events')
    .description('one stream of state changes from every site: roles, epochs, links, sync and resync progress, failovers, fences, cache, devices')
    .option('-c, --config <file>', 'follow every site of a cluster file that has an admin address')
    .option('-a, --admin <host:port>', `follow one site's admin address (default ${defaultAdmin} when no --config; with --config: only that address)`)
    .option('--now', 'print the current state of every site and exit')
    .option('--json', 'one JSON object per line (NDJSON)')
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror events --config targets/loopback/cluster.yaml
  $ geomirror events --config targets/loopback/cluster.yaml --now --json | jq .

Like drbdsetup events2: first what exists at each site ("exists:"), then one line per change
(time, site, what changed), until Ctrl-C. A site that goes away is retried and named. With
--now, exit code 1 when a site does not answer. The admin port is HTTPS and authenticated: a
one-time token from the cluster key (the file's secret:), or the client certificate in
GEOMIRROR_CLIENT_CERT_DIR.`,
    )
    .action(async (opts: EventsCliOptions) => {
      const { eventsCommand } = await import('./events.js');
      await eventsCommand(opts);
    });
}
