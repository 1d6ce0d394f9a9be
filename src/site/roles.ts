// Which replication runtime runs each role. Each runtime (primary fan-out, mirror, relay,
// standby, witness) is added here as it is built; runSite refuses a role missing from this
// table with a message saying so, rather than pretending to run it.
import type { Role } from './config.js';
import type { RoleRuntime } from './run.js';

export const roleRuntimes: Partial<Record<Role, RoleRuntime>> = {};
