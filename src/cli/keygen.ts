// `geomirror keygen`: the cluster key every site authenticates with (DESIGN.md: `secret:
// file:./data/cluster.key`). 32 random bytes as hex; the file is created 0600 and never
// overwritten by accident, since replacing a live cluster's key locks its sites out.
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import type { Command } from 'commander';

export const clusterKeyBytes = 32;

export function generateKeyHex(): string {
  return randomBytes(clusterKeyBytes).toString('hex');
}

/** Writes a new key to `path` (mode 0600, parent folders created). Refuses an existing file unless `force`. */
export function writeKeyFile(path: string, force = false): string {
  const abs = resolve(path);
  const hex = generateKeyHex();
  mkdirSync(dirname(abs), { recursive: true });
  try {
    writeFileSync(abs, `${hex}\n`, { mode: 0o600, flag: force ? 'w' : 'wx' });
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'EEXIST') {
      throw new Error(`${abs} already exists; every site of a cluster must share one key, so keep it, or replace it everywhere with --force`);
    }
    throw err;
  }
  chmodSync(abs, 0o600); // an overwritten file keeps its old mode otherwise
  return abs;
}

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
    .action((opts: { out?: string; force?: boolean }) => {
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
