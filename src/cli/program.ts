// The geomirror command tree, without parsing: main.ts parses process.argv with it, tests
// build it in-process to read each command's help.
//
// Everything imported here is light: commander and each command's face (name, options, help).
// A command's work, and what it needs (the config loader and yaml, X.509, the admin client,
// cli-progress, the site, hal, the Pi flasher), is imported inside its action, when it runs:
// either the face and the action sit in the command's own module with its heavy imports made
// in the action (site, cluster, check, pki, keygen, devices, flash), or, where the module
// is the work and others import it (status, events, verify, start, promote/demote), the face is
// a separate X-command.ts. So `geomirror --help` and `geomirror X --help` load commander and
// these modules only (issue 19: under 0.5 s; test/cli/help.test.ts checks what they load).
import { Command } from 'commander';
import { registerCluster } from './cluster.js';
import { registerKeygen } from './keygen.js';
import { registerSite } from './site.js';
import { registerStatus } from './status-command.js';
import { registerStart } from './start-command.js';
import { registerVerify } from './verify-command.js';
import { registerDevices } from './devices.js';
import { registerFlash } from './flash.js';
import { registerSwitchover } from './switchover-command.js';
import { registerPki } from './pki.js';
import { packageManifest as pkg } from './package-root.js';
import { registerCheck } from './check.js';
import { registerEvents } from './events-command.js';

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
