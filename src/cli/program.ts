// The geomirror command tree, without parsing: main.ts parses process.argv with it, tests
// build it in-process to read each command's help.
import { Command } from 'commander';
import { registerCluster } from './cluster.js';
import { registerKeygen } from './keygen.js';
import { registerSite } from './site.js';
import { registerStatus } from './status.js';
import { registerStart } from './start.js';
import { registerVerify } from './verify.js';
import { registerDevices } from './devices.js';
import { registerFlash } from './flash.js';
import { registerSwitchover } from './switchover.js';
import { registerPki } from './pki.js';
import { packageManifest as pkg } from './package-root.js';
import { registerCheck } from './check.js';
import { registerEvents } from './events.js';

export function buildProgram(): Command {
  const program = new Command();
  program
    .name('geomirror')
    .description(pkg.description)
    .version(pkg.version, '-V, --version', 'print the geomirror version')
    .showHelpAfterError('(run with --help for usage)');
  registerCluster(program);
  registerSite(program);
  registerStatus(program);
  registerKeygen(program);
  registerStart(program);
  registerVerify(program);
  registerDevices(program);
  registerFlash(program);
  registerSwitchover(program);
  registerPki(program);
  registerCheck(program);
  registerEvents(program);
  return program;
}
