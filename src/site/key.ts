// The cluster key (DESIGN.md: `secret: file:./data/cluster.key`): 32 random bytes as hex in a
// 0600 file. Never overwritten by accident, since replacing a live cluster's key locks every
// site that still has the old one out.
import { randomBytes } from 'node:crypto';
import { chmodSync, mkdirSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';

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
