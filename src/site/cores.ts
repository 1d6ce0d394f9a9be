// Which core a site runs in this life, and one small adapter per role with everything the site
// layer asks of a core: whether it takes host writes, whom it dials, whether a failover changed
// what it may do. The rest of src/site talks to this interface only (no `instanceof` on cores,
// no role-string branches). Pure: the simulator (test/sim/failover.ts) picks its cores here too.
//
// The rule (issues 10, 16 item 5): the cluster file says the preferred roles; the meta record
// says what a failover left this site acting as. The primary and its standby are a pair: each
// runs as the primary (`acting: primary`, or the configured primary with no acting), or as the
// standby that follows the other (`acting: standby`, or the configured standby), so a fenced
// primary comes back as its partner's standby by itself and `geomirror promote` on it fails
// back. `acting: mirror` is a demoted primary waiting for the next primary: it runs as a mirror
// until it adopts that epoch, then as its standby (src/site/roles.ts).
import { Mirror, type MirrorStatus } from '../core/mirror.js';
import { Primary, type PrimaryStatus } from '../core/primary.js';
import { Relay, type RelayAckMode, type RelayStatus } from '../core/relay.js';
import { Standby, type StandbyPhase, type StandbyStatus } from '../core/standby.js';
import type { CoreAction, Epoch, Limits, Meta, MirrorLossPolicy, PeerId, Role } from '../core/types.js';

/** The role a site runs in this life: its configured role, or the one a failover left it in. */
export type ActingRole = 'primary' | 'mirror' | 'relay' | 'standby';

export type CoreStatus = PrimaryStatus | MirrorStatus | RelayStatus | StandbyStatus;

/** What of a site's configuration decides its core (a subset of SiteConfig, so tests can build one). */
export interface CoreSite {
  readonly name: PeerId;
  readonly role: 'primary' | 'mirror' | 'relay' | 'standby';
  readonly mirrors: readonly PeerId[];
  readonly forward?: PeerId;
  readonly standbyFor?: PeerId;
  readonly standby?: PeerId;
  readonly witnesses: readonly PeerId[];
  readonly relayAck: RelayAckMode;
  readonly onMirrorLoss: MirrorLossPolicy;
  readonly failoverTimeoutMs: number;
  /** A relay keeps a copy (claim 18); other roles always do. */
  readonly storage: boolean;
  /** The cluster can fail over (it has a standby): mirrors and relays keep a failover's tail. */
  readonly failover: boolean;
  /** Sites the cluster file allows to be this site's upstream (undefined: any). */
  readonly upstreams?: readonly PeerId[];
  /** Who decides a failover (issue 20 item 3): the built-in vote (default) or etcd (`coordinator:`): the two never mix. */
  readonly arbiter?: 'vote' | 'external';
}

export interface CoreVolume {
  readonly volumeBytes: number;
  readonly blockBytes: number;
  readonly limits: Limits;
}

/** The site layer's view of a core, whatever its role. */
export interface SiteCore {
  readonly core: Role;
  readonly acting: ActingRole;
  /** Peers this site dials when it starts (others dial it). */
  readonly dials: readonly PeerId[];
  /** Peers whose dirty bitmaps this core keeps (a primary's mirrors). */
  readonly bitmapPeers: readonly PeerId[];
  /** Peers whose dirty bits this core keeps a copy of (a following standby: its primary's other mirrors). */
  readonly copyPeers: readonly PeerId[];
  status(): CoreStatus;
  /** Host operations the core takes now; 0 when it takes none (a mirror, a standby not yet promoted). */
  hostQueueFree(): number;
  /** Whether host writes go to this core at all (they wait while it is busy). */
  readonly takesHostWrites: boolean;
  /**
   * Whether a host read of this range may come from local storage; false: it goes to the core
   * (`hostRead`), which reads it from a mirror (the local copy is not whole there).
   */
  readable(offsetBytes: number, lengthBytes: number): boolean;
  /** A following standby's phase; undefined for other roles. */
  phase(): StandbyPhase | undefined;
  /** The newer epoch that fenced the primary this site is (or became). */
  fencedBy(): Epoch | undefined;
  /** Why a planned promotion is refused (undefined: it may promote). Only a following standby may. */
  notPromotable(): string | undefined;
  /** A planned promotion (`geomirror promote`): the actions to execute. */
  promote(reason: string, nowMs: number, force: boolean): CoreAction[];
  /** Peers to dial once promoted (the old primary), empty otherwise. */
  readonly dialOnPromotion: readonly PeerId[];
}

/** How often a following standby repeats its question while the primary stays silent. */
export function queryIntervalMsFor(failoverTimeoutMs: number): number {
  return Math.max(20, Math.min(500, Math.floor(failoverTimeoutMs / 4)));
}

export function chooseCore(site: CoreSite, meta: Meta, vol: CoreVolume): SiteCore {
  const common = { self: site.name, volumeBytes: vol.volumeBytes, blockBytes: vol.blockBytes, limits: vol.limits };
  const ups = site.upstreams !== undefined ? { upstreams: site.upstreams } : {};
  const acting = meta.acting;
  if (site.role === 'relay') {
    if (site.forward === undefined) throw new Error(`sites.${site.name}.forward: a relay needs the next site of its chain`);
    return plain(new Relay({ ...common, ...ups, keepTail: site.failover, downstream: site.forward, ackMode: site.relayAck, storage: site.storage }), 'relay', [site.forward]);
  }
  if (site.role === 'mirror' || (acting === 'mirror' && site.role === 'primary') || (acting === 'standby' && site.role === 'primary' && site.standby === undefined)) {
    // A demoted old primary follows whoever is primary next, as a mirror until it learns who.
    return plain(new Mirror({ ...common, ...ups, keepTail: site.failover }), 'mirror', []);
  }
  // Authority is proven, never remembered (issue 16 item 1): where a failover can happen, a
  // primary serves only once a majority of the cluster's sites confirmed its epoch, or, with
  // etcd as the arbiter, once the coordinator holds the group's key for it (never both).
  const external = site.arbiter === 'external';
  const prove = (mirrors: readonly PeerId[]) => (external ? { externalAuthority: { held: false } } : { proveAuthority: { sites: 1 + mirrors.length + site.witnesses.length, witnesses: site.witnesses } });
  if (site.role === 'primary' && acting !== 'standby') {
    const core = new Primary({ ...common, mirrors: site.mirrors, onMirrorLoss: site.onMirrorLoss, ...(site.standby ? { standby: site.standby, ...prove(site.mirrors) } : external ? prove(site.mirrors) : {}) });
    return primaryCore(core, site.mirrors, [...site.mirrors, ...site.witnesses]);
  }
  // The other site of the pair, and the mirrors besides it (the same sites seen from either end).
  const partner = site.role === 'primary' ? site.standby! : site.standbyFor;
  if (partner === undefined) throw new Error(`sites.${site.name}.standby-for: a standby needs the primary it backs up`);
  const others = site.mirrors.filter((m) => m !== partner);
  if (acting === 'primary') {
    // Promoted in an earlier life (meta.acting): the primary of the persisted epoch, fanning
    // out to its partner (its standby now) and the mirrors; the bitmaps hold what each is owed.
    // The partner protects writes only once this primary saw it in sync (it may be the dead old
    // primary, which must not hold host writes up).
    const core = new Primary({ ...common, mirrors: [partner, ...others], onMirrorLoss: site.onMirrorLoss, standby: partner, standbyArm: 'inSync', ...prove([partner, ...others]) });
    return primaryCore(core, [partner, ...others], [partner, ...others, ...site.witnesses]);
  }
  if (!(site.failoverTimeoutMs > vol.limits.heartbeatIntervalMs)) {
    throw new Error(`sites.${site.name}.failover-timeout: ${site.failoverTimeoutMs} ms must exceed the heartbeat interval (${vol.limits.heartbeatIntervalMs} ms), or a live primary looks lost between two heartbeats`);
  }
  const core = new Standby({
    ...common, primary: partner, mirrors: others, ...(site.witnesses[0] ? { witness: site.witnesses[0] } : {}),
    failoverTimeoutMs: site.failoverTimeoutMs, queryIntervalMs: queryIntervalMsFor(site.failoverTimeoutMs), onMirrorLoss: site.onMirrorLoss,
    ...(external ? { arbiter: 'external' as const } : {}),
  });
  return standbyCore(core, [...others, ...site.witnesses], partner, others);
}

const notAStandby = (acting: ActingRole) => (): string => `this site runs as ${acting}; only a following standby can be promoted`;

/** A mirror or relay: takes no host writes, never promotes, is never fenced as a primary. */
function plain(core: Mirror | Relay, acting: 'mirror' | 'relay', dials: PeerId[]): SiteCore {
  return {
    core, acting, dials, bitmapPeers: [], copyPeers: [], takesHostWrites: false, dialOnPromotion: [],
    status: () => core.status(),
    hostQueueFree: () => 0,
    readable: () => true,
    phase: () => undefined,
    fencedBy: () => undefined,
    notPromotable: notAStandby(acting),
    promote: () => [],
  };
}

/** The primary dials its mirrors, and the witnesses for heartbeats. */
function primaryCore(core: Primary, mirrors: readonly PeerId[], dials: PeerId[]): SiteCore {
  return {
    core, acting: 'primary', dials, bitmapPeers: mirrors, copyPeers: [], takesHostWrites: true, dialOnPromotion: [],
    status: () => core.status(),
    hostQueueFree: () => core.hostQueueFree(),
    readable: (offsetBytes, lengthBytes) => core.readable(offsetBytes, lengthBytes),
    phase: () => undefined,
    fencedBy: () => core.fencedBy(),
    notPromotable: notAStandby('primary'),
    promote: () => [],
  };
}

/** A standby dials the mirrors and witnesses it asks when the primary goes silent, and the old primary once promoted. */
function standbyCore(core: Standby, dials: PeerId[], old: PeerId, mirrors: readonly PeerId[]): SiteCore {
  return {
    core, acting: 'standby', dials, bitmapPeers: [], copyPeers: mirrors, takesHostWrites: true, dialOnPromotion: [old],
    status: () => core.status(),
    hostQueueFree: () => core.hostQueueFree(),
    readable: (offsetBytes, lengthBytes) => core.readable(offsetBytes, lengthBytes),
    phase: () => core.phaseNow(),
    fencedBy: () => core.fencedBy(),
    notPromotable: () => core.notPromotable(),
    promote: (reason, nowMs, force) => core.promote(reason, nowMs, force),
  };
}
