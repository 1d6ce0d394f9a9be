// Defaults the command line shows in its help and the commands use. Kept apart from the
// commands' work and light on purpose (node and package-root only): every command's
// registration may import it, and `geomirror --help` must load nothing heavy (issue 19).
import { join } from 'node:path';
import { packageRoot } from './package-root.js';

/** The shipped demo cluster: what `geomirror start` runs and what status, pki, promote and demote read without --config. */
export const defaultClusterFile = join(packageRoot, 'targets', 'loopback', 'cluster.yaml');
/** The admin address status and events ask without --config (the demo cluster's primary). */
export const defaultAdmin = '127.0.0.1:9400';
