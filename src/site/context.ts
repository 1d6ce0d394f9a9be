// What a role runtime is given and what it hands back (src/site/run.ts opens the one, the admin
// server and the stop path talk to the other). Types only, in a file of their own, so every
// runtime can name them without importing the code that starts runtimes (no import cycle).
import type { GeoReport } from '../core/geo.js';
import type { NbdTlsOptions } from '../nbd/tls.js';
import type { LinkSecurity } from '../net/security.js';
import type { ChecksumAnswer, ChecksumRequest } from './checksums.js';
import type { ClusterConfig, GroupConfig, SiteConfig } from './config.js';
import type { LinkHub } from './link-hub.js';
import type { NbdServer } from '../nbd/server.js';
import type { SiteTlsIdentity } from './link-security.js';
import type { Logger } from './log.js';
import type { SiteMetrics } from './metrics.js';
import type { RoleChangeAnswer } from './role-change.js';
import type { SiteStatus } from './status.js';

/** Everything a role runtime needs, checked and opened by runSite. */
export interface SiteContext {
  config: ClusterConfig;
  site: SiteConfig;
  /** The cluster key (claim: sites authenticate each other with it). */
  secret: Buffer;
  /**
   * How every replication link of this site is secured (mutual TLS 1.3 with the site's
   * certificate, or `transport: insecure`) plus the volume geometry the handshake checks:
   * pass it as `security` to every LinkServer and Dialer the site constructs.
   */
  linkSecurity: LinkSecurity;
  /** The site's certificate and key (reloaded when they change); undefined with transport: insecure. */
  tlsIdentity?: SiteTlsIdentity;
  /** TLS of the site's NBD export (`nbd-tls:`); pass it as `tls` to the NbdServer. Undefined: off. */
  nbdTls?: NbdTlsOptions;
  log: Logger;
  metrics: SiteMetrics;
  /** Primary/standby with located mirrors: the claims 5-7 report, already logged. */
  geo?: GeoReport;
  /** With several consistency groups (issue 20): the site's one replication port, shared by the groups' Peers. */
  linkHub?: LinkHub;
  /** With several consistency groups: the site's one NBD server, where each group's life adds and withdraws its volumes' exports. */
  nbdHub?: NbdServer;
  /** The consistency group this context serves (its config is the group's: src/site/volumes.ts). */
  group?: GroupConfig;
}

/** A running role: what the admin server and the stop path talk to. */
export interface SiteRuntime {
  status(): SiteStatus;
  /** Stop accepting work, finish or persist what is in flight, close devices and sockets. */
  stop(): Promise<void>;
  /**
   * Optional: settles when the runtime ends by itself. A rejection (say, the storage device
   * died) makes the site process exit non-zero after stop().
   */
  done?: Promise<void>;
  /**
   * Optional, on sites with storage: per-region digests of this site's own storage, for
   * `geomirror verify` (GET /checksums on the admin port). The request is already validated.
   */
  checksums?(req: ChecksumRequest, group?: string): Promise<ChecksumAnswer>;
  /** Optional: planned switchover (`geomirror promote`, POST /promote): a following standby takes over. */
  promote?(reason: string, force?: boolean): Promise<RoleChangeAnswer>;
  /** Optional: planned switchover (`geomirror demote`, POST /demote): the primary drains and waits as a mirror, then follows the promoted standby as its standby. */
  demote?(reason: string): Promise<RoleChangeAnswer>;
}

export type RoleRuntime = (ctx: SiteContext) => Promise<SiteRuntime>;
