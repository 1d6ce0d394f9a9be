// `geomirror keygen`: the cluster key every site authenticates with (src/site/key.ts).
import type { Command } from 'commander';

export function registerKeygen(program: Command): void {
  program
    .command('keygen')
    .description('make a cluster key (32 random bytes, hex) for the secret: key of the cluster file')
    .option('-o, --out <file>', 'write the key to FILE (mode 0600) instead of printing it')
    .option('-f, --force', 'overwrite FILE if it exists (sites with the old key can no longer connect)')
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror keygen --out data/cluster.key       # then in the cluster file: secret: file:./data/cluster.key
  $ geomirror keygen                              # print a key, e.g. for secret: <hex> inline
  $ geomirror keygen --out data/cluster.key --force`,
    )
    .action(async (opts: { out?: string; force?: boolean }) => {
      // Loaded here: `geomirror --help` loads the command line only (issue 19).
      const { clusterKeyBytes, generateKeyHex, writeKeyFile } = await import('../site/key.js');
      if (opts.out === undefined) {
        process.stdout.write(`${generateKeyHex()}\n`);
        return;
      }
      try {
        const abs = writeKeyFile(opts.out, opts.force === true);
        process.stderr.write(`wrote a ${clusterKeyBytes}-byte cluster key to ${abs} (mode 0600); copy it to every site\n`);
      } catch (err) {
        process.stderr.write(`geomirror keygen: ${(err as Error).message}\n`);
        process.exitCode = 1;
      }
    });
}
