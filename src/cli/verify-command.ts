// `geomirror verify` as --help shows it: name, options, help. The work (src/cli/verify.ts,
// with the admin client, the config loader and cli-progress) is imported when the command
// runs, so `geomirror --help` does not load it (issue 19: --help in under 0.5 s).
import type { Command } from 'commander';
import { checksumAlgorithm } from '../site/checksums.js';
import type { VerifyCliOptions } from './verify.js';

export function registerVerify(program: Command): void {
  program
    .command('verify')
    .description('compare every replica region by region by checksum (DRBD online-verify style); print mismatching byte ranges')
    .requiredOption('-c, --config <file>', 'the cluster file; every site with storage is asked on its admin address')
    .option('-r, --region-size <size>', 'bytes per checksum region, a multiple of the block size', '1MiB')
    .addHelpText(
      'after',
      `
Each site digests its own storage (${checksumAlgorithm} per region, GET /checksums on its admin
port); only digests cross the network. Writes in flight while verify runs can show up as
mismatches that are gone a moment later: verify an idle volume, or re-run to confirm.

Examples:
  $ geomirror verify --config targets/loopback/cluster.yaml
  $ geomirror verify --config cluster.yaml --region-size 64KiB    # name a mismatch more closely

Exit codes: 0 every replica agrees, 1 some range differs, 2 a site could not be asked.`,
    )
    .action(async (opts: VerifyCliOptions) => {
      const { runVerifyCommand } = await import('./verify.js');
      process.exitCode = await runVerifyCommand(opts);
    });
}
