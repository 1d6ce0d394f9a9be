// The cluster key (DESIGN.md: `secret: file:./data/cluster.key`): 32 random bytes as hex in a
// 0600 file. Never overwritten by accident, since replacing a live cluster's key locks every
// site that still has the old one out.
import { randomBytes } from 'node:crypto';
import { resolve } from 'node:path';
import { writePrivateFile } from './private-files.js';

export const clusterKeyBytes = 32;

export function generateKeyHex(): string {
  return randomBytes(clusterKeyBytes).toString('hex');
}

/** Writes a new key to `path` (mode 0600, parent folders created). Refuses an existing file unless `force`. */
export function writeKeyFile(path: string, force = false): string {
  const abs = resolve(path);
  try {
    // 0600 in a 0700 folder, never through a symlink (src/site/private-files.ts).
    return writePrivateFile(abs, `${generateKeyHex()}\n`, { force, what: 'cluster key' });
  } catch (err) {
    if (/already exists; refusing/.test((err as Error).message)) {
      throw new Error(`${abs} already exists; every site of a cluster must share one key, so keep it, or replace it everywhere with --force`);
    }
    throw err;
  }
}
