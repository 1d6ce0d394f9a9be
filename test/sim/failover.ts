// Deterministic failover simulation (issue 10 item 7): topology `failover` = primary `local`,
// standby `backup`, mirrors `east` and `west`, every pair linked (a full mesh, so a promoted
// standby reaches every site). Drives the REAL core roles (Primary, Standby, Mirror) through the
// PRODUCTION executor (src/site/executor.ts, via test/sim/world.ts) under a
// seeded network (per-link delay, FIFO per direction) and a seeded host writer, with one fault
// scenario per seed:
//   crash        the primary dies and never comes back;
//   crashRejoin  the primary dies, restarts later as the old primary (fenced by the new epoch,
//                refuses host writes), then rejoins as a mirror and is resynced;
//   isolate      every link of the primary is cut (it stays alive), healed later; it is then
//                fenced and rejoins as a mirror;
//   cutStandby   only primary <-> standby is cut for longer than the failover timeout: the
//                mirrors still hear the primary, so there must be NO promotion;
//   none         no fault (baseline);
//   standbyCrash the primary dies and never comes back, then the standby crashes (sometimes with a
//                power cut) during or after its promotion: while its bitmapSets are in flight,
//                between them and the metaPersist { acting: primary } completion, right after it
//                became primary, or after it acked host writes as primary (sometimes twice);
//   switchover   planned: the standby's promote() is called while the primary is alive, either
//                after the primary was demoted (no new host writes, drained to quiescent, restarted
//                as a mirror with acting: mirror persisted) or without a demote (the new epoch
//                fences the old primary, which rejoins as a mirror);
//   standbyBehind one write fails on the standby's storage (an injected storageWritten with a
//                sense): the primary degrades it and acks host writes without it (under `block`
//                the host write of the failed seq gets the error), sometimes the primary <-> standby
//                link resets (right away, racing the writeStatus, or later), the standby is resynced;
//                then, at a random time after the failure, the primary dies for good. If the
//                standby was not confirmed in sync (promotion guard, src/core/standby.ts) when the
//                primary died, it must refuse (failover_refused), never promote, and no site acks a
//                host write after the crash; if it was, it must promote and the usual checks apply.
//   repeated     three failovers with no file edited (issue 16 items 5, 7): the primary dies,
//                backup promotes (epoch 2); local restarts on its stale meta (the primary of
//                epoch 1), is fenced, persists acting: standby and follows backup; once backup
//                says it is in sync, backup dies: local promotes (epoch 3); backup restarts on
//                ITS stale meta (acting primary of epoch 2), is fenced and follows local; once in
//                sync, local dies: backup promotes (epoch 4); local restarts and follows again.
// Every (re)start picks the core as the site layer does (src/site/replica.ts): a configured
// standby whose meta says acting: primary starts as the Primary of the persisted epoch with the
// persisted dirty bitmaps; a configured primary whose meta says acting: mirror starts as a Mirror.
// The host writer always writes to whichever site is primary now.
// Besides, 0-4 connection resets on random links at random times (reconnect 5-100 ms later),
// and in half the seeds one plain mirror is killed (or power-cut) and restarted.
// Checks: no CoreAssertionError; never two sites acking host writes in the same epoch; every
// block holds its last host-acked write (acked by either primary) or a write issued after it;
// promotion happened iff the scenario isolates, kills or switches over the primary; after heal
// the active primary's in-sync replicas are byte-identical; a standby that crashed after its
// promotion completed restarts as the acting primary. A host ack that arrives after the writer
// gave up on the write (switched to the new primary) still counts as acked: it must survive too.
//
// Consistency groups (issue 20; FailoverOptions.volumes, test/sim/group.ts): the same world with
// the address space split into 2-4 volumes, one replication stream for all. The `log` workload is
// a database on the host: sequence-numbered records spread over the volumes, each written only
// once the previous one was acked, random writes beside them in half the seeds. After every
// failover (a new primary, or the same site in a new life) the host first reads every volume's
// log on the new primary, as its NBD exports serve it (local storage where the core says the copy
// is whole, else through the core and a mirror); the records present must be a prefix of the
// issue order holding every acked record (the group cut), and the log goes on after that cut.
// After settling, the same check runs on every in-sync replica's storage; no byte outside the
// volumes' slices is ever written.
//
// It is a separate driver from sim.ts (not a new branch in it) so the fanout/chain/mixed seeds
// keep drawing exactly the same random numbers. The two scenarios added later are picked by a
// separate PRNG, so a seed that runs one of the first five draws what it drew before; standbyBehind
// takes over about one seed in eight through a third PRNG, so every other seed keeps its scenario
// and its draws. Power cuts are not modelled here: the failover
// rule is about which site holds what, and sim.ts covers power-cut durability of the roles.

import { Prng } from '../../hal/prng.js';
import { Mirror } from '../../src/core/mirror.js';
import { Scheduler, SimLife, startHeartbeats, type SimDelays } from './world.js';
import { Primary } from '../../src/core/primary.js';
import { Standby } from '../../src/core/standby.js';
import { CoreAssertionError, defaultLimits, senseOf, type CoreAction, type CoreEvent, type Epoch, type HostError, type Limits, type Meta, type PeerId, type PeerMsg, type Role } from '../../src/core/types.js';
import type { Executor, ExecutorEnv, ExecutorPorts } from '../../src/site/executor.js';
import { checkGroupCut, fillRecord, makeLayout, recordPlace, type GroupLayout } from './group.js';
import { SimCache, SimDisk, SimPersist } from './models.js';

export type FailoverScenario = 'crash' | 'crashRejoin' | 'isolate' | 'cutStandby' | 'none' | 'standbyCrash' | 'switchover' | 'standbyBehind' | 'repeated';

export interface FailoverOptions {
  /** Force one scenario (default: drawn from the seed). */
  readonly scenario?: FailoverScenario;
  readonly trace?: (line: string) => void;
  /**
   * Split the replicated address space into this many volumes of one consistency group (issue 20;
   * see test/sim/group.ts), or 'seeded': 2-4 drawn from the seed. Default 1: one volume, the
   * original workload, exactly the draws it always made.
   */
  readonly volumes?: number | 'seeded';
  /**
   * With volumes: `log` (default) writes sequence-numbered records, each only after the previous
   * one was acked, checked for the group cut after every failover and at the end; `random`
   * writes at random inside the volumes' slices.
   */
  readonly workload?: 'log' | 'random';
  /** log workload: also concurrent random writes to the volumes' data areas (default: drawn from the seed). */
  readonly load?: boolean;
  /** log workload: skip the group-cut checks (a mutation test shows what the other checks miss). */
  readonly groupCheck?: boolean;
  /**
   * A deliberately wrong site layer (group-mutation.test.ts): the recovery reads go to local
   * storage even where the core says the copy is not whole (a journal replay still pending).
   */
  readonly readsIgnoreCore?: boolean;
  /**
   * Tests swap a site's executor for a deliberately broken one (group-mutation.test.ts); `later`
   * runs a callback after a simulated delay if this process life is still running then.
   */
  readonly makeExecutor?: (site: PeerId, later: (delayMs: number, fn: () => void) => void) => ((core: Role, ports: ExecutorPorts, env: ExecutorEnv) => Executor) | undefined;
  /** Every site flushes its storage after this many performed writes (default 16; the product's is 256). */
  readonly flushAfterWritesMax?: number;
}

export interface FailoverResult {
  readonly seed: number;
  readonly ok: boolean;
  readonly failures: string[];
  readonly stats: Record<string, number | string>;
}

const blockBytes = 512;
const volumeBytes = 64 * 1024;
const tickMs = 10;
const failoverTimeoutMs = 600;
const simEndMs = 60_000;
const names = ['local', 'backup', 'east', 'west'] as const;

const limits: Limits = {
  ...defaultLimits,
  inflightWritesMax: 8,
  inflightBytesMax: 16 * 1024,
  hostQueueWritesMax: 8,
  cacheBytesMax: 32 * 1024,
  regionBytes: 4096,
  resyncBytesPerSecMax: 4 * 1024 * 1000,
  resyncInflightRegionsMax: 2,
  mirrorLossGraceMs: 300,
  heartbeatIntervalMs: 100,
  flushIntervalMs: 50,
  flushAfterWritesMax: 16,
  seqReserveChunk: 64n,
};

type Core = Primary | Mirror | Standby;

interface Site {
  readonly name: PeerId;
  core: Core | undefined;
  life: number;
  readonly disk: SimDisk;
  readonly cache: SimCache;
  readonly persist: SimPersist;
  /** The running process life (core + production executor), undefined while down. */
  run: SimLife | undefined;
}

interface Link {
  up: boolean;
  cut: boolean;
  conn: number;
  delayMs: number;
  lastDeliverMs: Record<string, number>;
}

interface HostWrite {
  readonly id: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly site: PeerId;
  readonly life: number;
  outcome: 'pending' | 'acked' | 'failed' | 'unknown';
  /** log workload: the record this write carries. */
  readonly record?: number;
}

/** Host reads get ids of their own (a write's id is its index in `writes`). */
const readIdBase = 1_000_000_000;

/** The multi-volume workload's state (FailoverOptions.volumes). */
interface Group {
  readonly layout: GroupLayout;
  readonly prng: Prng;
  readonly check: boolean;
  readonly recordsTarget: number;
  readonly randomTarget: number;
  randomIssued: number;
  /** The next record to issue (after a failover: the recovered cut + 1). */
  nextRecord: number;
  pendingRecord: HostWrite | undefined;
  ackedMax: number;
  issuedMax: number;
  /** `site:life` of the primary whose cut was read (the writer's first primary needs none). */
  verified: string | undefined;
  /** The cut the last recovery found (none yet, or one under way: no bound, the recovery's own check covers late acks). */
  lastCut: number;
  recovery: Recovery | undefined;
}

/** The database's recovery after a failover: it reads every volume's log on the new primary before it writes the next record. */
interface Recovery {
  readonly key: string;
  readonly site: PeerId;
  readonly life: number;
  readonly parts: (Uint8Array | undefined)[];
  left: number;
  attempts: number;
}

const linkKey = (a: PeerId, b: PeerId): string => (a < b ? `${a}|${b}` : `${b}|${a}`);

export function runFailover(seed: number, opts: FailoverOptions = {}): FailoverResult {
  return new FailoverSim(seed, opts).run();
}

class FailoverSim {
  private readonly prng: Prng;
  private readonly sched = new Scheduler();
  private readonly sites = new Map<PeerId, Site>();
  private readonly links = new Map<string, Link>();
  private readonly failures: string[] = [];
  private readonly limits: Limits;
  private readonly scenario: FailoverScenario;
  private readonly writes: HostWrite[] = [];
  /** Last write id per block, in the order the host issued them. */
  private readonly blockWrites: number[][] = Array.from({ length: volumeBytes / blockBytes }, () => []);
  private readonly ackers = new Map<Epoch, Set<PeerId>>();
  private hostOps: number;
  private readonly qd: number;
  private readonly pumpGapMs: number;
  /** Policy of the epoch-1 primary; under `degrade` it names `backup` as its standby (never degraded for unreachability). */
  private readonly oldPolicy: 'block' | 'degrade';
  private issued = 0;
  /** Where the host writer sends writes now (the NBD client connected to the primary's export). */
  private target: PeerId | undefined = 'local';
  /** switchover: the primary is being demoted (its export is closed: no new host writes). */
  private demoting = false;
  /** The demoted local is about to restart as the standby of the new primary (followNewPrimary). */
  private following = false;
  /** The epoch local's meta said when its life started (replica.ts compares with initialMeta). */
  private localLifeEpoch = 0n;
  /** standbyCrash: crashes of the standby still to come, and how the next one is triggered. */
  private standbyCrashesLeft = 0;
  private standbyCrashPlan: { mode: 'decided' | 'meta' | 'promoted' | 'afterWrites'; writes: number; life: number; armed: boolean } | undefined;
  private ackedThisLife = 0;
  /**
   * standbyBehind: `armed` makes the standby's next storage write fail; the primary crashes
   * `crashAfterMs` after that failure completed; what the standby's guard said at that moment.
   */
  private behind: {
    armed: boolean; injectedAtMs: number | undefined; crashAfterMs: number; resetAfterMs: number | undefined;
    crashAtMs: number | undefined; confirmedAtCrash: boolean | undefined; refusals: number; ackedAfterCrash: number;
  } | undefined;
  private faultsDone = false;
  /** A mirror crash is planned or its restart has not happened yet. */
  private mirrorFaultPending = false;
  private stopped = false;
  private readonly stats: Record<string, number> = { acked: 0, ackedByNewPrimary: 0, failed: 0, unknown: 0, busy: 0, resets: 0, mirrorCrashes: 0 };
  /** Only in the scenarios that use them (the stats of the first five stay as they were). */
  private readonly extra: Record<string, number | string> = {};

  /** Multi-volume group workload, if asked for. */
  private readonly group: Group | undefined;
  private readonly randomInVolumes: GroupLayout | undefined;
  private readonly trace: ((line: string) => void) | undefined;
  private readonly makeExecutor: FailoverOptions['makeExecutor'];
  private readonly readsIgnoreCore: boolean;
  private readonly reads = new Map<number, { rec: Recovery; volume: number }>();
  private readNext = readIdBase;

  constructor(private readonly seed: number, opts: FailoverOptions) {
    this.limits = opts.flushAfterWritesMax === undefined ? limits : { ...limits, flushAfterWritesMax: opts.flushAfterWritesMax };
    const scenario = opts.scenario;
    this.trace = opts.trace;
    this.makeExecutor = opts.makeExecutor;
    this.readsIgnoreCore = opts.readsIgnoreCore ?? false;
    this.prng = new Prng(seed);
    const kinds: FailoverScenario[] = ['crash', 'crashRejoin', 'isolate', 'cutStandby', 'none'];
    const drawn = kinds[this.prng.int(kinds.length)]!;
    const later: FailoverScenario[] = ['standbyCrash', 'switchover'];
    const pick = new Prng(seed * 7919 + 104729).int(kinds.length + later.length);
    const behind = new Prng(seed * 104723 + 7907).int(8) === 0;
    const repeated = new Prng(seed * 15485863 + 32452843).int(7) === 0;
    this.scenario = scenario ?? (behind ? 'standbyBehind' : repeated ? 'repeated' : pick < kinds.length ? drawn : later[pick - kinds.length]!);
    this.hostOps = 40 + this.prng.int(60);
    // Three failovers take longer: the writer keeps writing through all of them.
    if (this.scenario === 'repeated') this.hostOps *= 4;
    this.qd = 1 + this.prng.int(4);
    this.pumpGapMs = 10 + this.prng.int(40);
    this.oldPolicy = this.prng.chance(0.5) ? 'block' : 'degrade';
    for (const name of names) {
      this.sites.set(name, {
        name, core: undefined, life: 0, disk: new SimDisk(volumeBytes, blockBytes), cache: new SimCache(),
        persist: new SimPersist({ epoch: 1n, seqReserved: 1n }), run: undefined,
      });
    }
    for (let i = 0; i < names.length; i++) {
      for (let j = i + 1; j < names.length; j++) {
        this.links.set(linkKey(names[i]!, names[j]!), { up: false, cut: false, conn: 0, delayMs: 1 + this.prng.int(5), lastDeliverMs: {} });
      }
    }
    // The group draws from a PRNG of its own: the fault plan draws what it draws with one volume.
    const gp = new Prng(seed * 48271 + 2147483647);
    const volumes = opts.volumes === 'seeded' ? 2 + gp.int(3) : opts.volumes ?? 1;
    if (volumes > 1 || opts.workload !== undefined) {
      const log = (opts.workload ?? 'log') === 'log';
      const layout = makeLayout(gp, volumes, volumeBytes, this.limits.regionBytes, blockBytes, log);
      if (log) {
        const load = opts.load ?? gp.chance(0.5);
        this.group = {
          layout, prng: gp, check: opts.groupCheck ?? true, recordsTarget: this.hostOps, randomTarget: load ? this.hostOps : 0, randomIssued: 0,
          nextRecord: 1, pendingRecord: undefined, ackedMax: 0, issuedMax: 0, verified: undefined, lastCut: Number.MAX_SAFE_INTEGER, recovery: undefined,
        };
        this.stats.groupChecks = 0;
        this.stats.records = 0;
        this.stats.recordsAcked = 0;
        this.stats.recordsReissued = 0;
        this.stats.recoveryReadsByMirror = 0;
        this.stats.recoveries = 0;
        this.extra.load = load ? 1 : 0;
        this.stats.recoveredInFlight = 0;
      } else {
        this.randomInVolumes = layout;
      }
      this.extra.volumes = volumes;
      this.extra.layout = layout.volumes.map((v) => `${v.offsetBytes}+${v.sizeBytes}`).join(' ');
    }
  }

  run(): FailoverResult {
    for (const name of names) this.startSite(this.sites.get(name)!);
    for (const key of this.links.keys()) this.sched.at(1, () => this.connect(key));
    this.sched.at(20, () => this.pump());
    this.planFaults();
    const tickAll = (): void => {
      for (const s of this.sites.values()) if (s.core !== undefined) this.feed(s, { type: 'tick' });
      if (!this.stopped) this.sched.at(this.sched.now + tickMs, tickAll);
    };
    this.sched.at(tickMs, tickAll);
    while (this.failures.length === 0) {
      if (this.sched.now > simEndMs) {
        this.fail(`did not settle within ${simEndMs} ms: ${this.describe()}`);
        break;
      }
      if (!this.sched.runOne()) break;
      if (this.faultsDone && !this.mirrorFaultPending && this.outstanding() === 0 && ((this.workloadDone() && this.settled()) || this.refusedSettled())) break;
    }
    this.stopped = true;
    if (this.failures.length === 0) this.finalChecks();
    return { seed: this.seed, ok: this.failures.length === 0, failures: this.failures, stats: { ...this.stats, ...this.extra, scenario: this.scenario, policy: this.oldPolicy, qd: this.qd, simMs: Math.round(this.sched.now) } };
  }

  // -------------------------------------------------------------------------------------------
  // Faults

  private planFaults(): void {
    // Connection resets on any link (TCP reset; reconnect shortly after), before, during and
    // after the scenario's fault: lost frames, re-joins and re-sent queries on every path.
    const resets = this.prng.int(5);
    const keys = [...this.links.keys()];
    for (let i = 0; i < resets; i++) {
      const key = keys[this.prng.int(keys.length)]!;
      this.sched.at(this.prng.int(3000), () => {
        const l = this.links.get(key)!;
        if (!l.up) return;
        this.log(`RESET ${key}`);
        this.stats.resets!++;
        this.disconnect(key);
        this.sched.at(this.sched.now + 5 + this.prng.int(100), () => this.connect(key));
      });
    }
    // Half the seeds: one plain mirror dies (process kill or power cut) and restarts, before,
    // during or after the failover: the majority must wait for it, the new primary resyncs it.
    if (this.prng.chance(0.5)) {
      const m = this.sites.get(this.prng.chance(0.5) ? 'east' : 'west')!;
      const powerCut = this.prng.chance(0.5);
      this.mirrorFaultPending = true;
      this.sched.at(this.prng.int(3000), () => {
        this.stats.mirrorCrashes!++;
        this.crash(m);
        if (powerCut) m.disk.powerCut(this.prng);
        this.sched.at(this.sched.now + 20 + this.prng.int(400), () => {
          this.startSite(m);
          for (const key of this.links.keys()) if (key.split('|').includes(m.name)) this.sched.at(this.sched.now + 5, () => this.connect(key));
          this.mirrorFaultPending = false;
        });
      });
    }
    const t0 = 100 + this.prng.int(400);
    const local = this.sites.get('local')!;
    switch (this.scenario) {
      case 'none':
        this.faultsDone = true;
        break;
      case 'crash':
      case 'crashRejoin':
        this.sched.at(t0, () => {
          this.crash(local);
          if (this.scenario === 'crash') this.faultsDone = true;
          else this.sched.at(this.sched.now + failoverTimeoutMs * 2 + this.prng.int(2000), () => this.restartOldPrimary());
        });
        break;
      case 'isolate':
        this.sched.at(t0, () => {
          for (const n of names) if (n !== 'local') this.cut(linkKey('local', n));
          // The isolation lasts until the standby took over (at least the drawn time): a plain
          // mirror that restarted meanwhile vouches only for its own life, so the majority can
          // come later than the drawn heal (seed 662).
          const healWhenPromoted = (): void => {
            if (!this.actsPrimary(this.sites.get('backup')!)) {
              this.sched.at(this.sched.now + 100, healWhenPromoted);
              return;
            }
            for (const n of names) if (n !== 'local') this.heal(linkKey('local', n));
            // The site layer restarts a fenced old primary as a mirror; model that once it has
            // learnt the new epoch (or after a bound, whichever first).
            this.sched.at(this.sched.now + 300, () => this.rejoinAsMirror());
          };
          this.sched.at(this.sched.now + failoverTimeoutMs * 2 + this.prng.int(2000), healWhenPromoted);
        });
        break;
      case 'cutStandby':
        this.sched.at(t0, () => {
          this.cut(linkKey('local', 'backup'));
          this.sched.at(this.sched.now + failoverTimeoutMs * 3 + this.prng.int(1500), () => {
            this.heal(linkKey('local', 'backup'));
            this.faultsDone = true;
          });
        });
        break;
      case 'standbyCrash':
        this.standbyCrashesLeft = this.prng.chance(0.25) ? 2 : 1;
        this.extra.standbyCrashes = 0;
        this.extra.standbyCrashModes = '';
        this.extra.ackedBeforeStandbyCrash = 0;
        this.extra.restartedAsPrimary = 0;
        this.armStandbyCrash();
        this.sched.at(t0, () => this.crash(local));
        break;
      case 'standbyBehind': {
        // A third of the seeds reset primary <-> standby right after the failure (before or
        // after the writeStatus crossed), a third later (the rejoin starts the resync at once).
        const resetMode = this.prng.int(3);
        const resetAfterMs = resetMode === 0 ? undefined : resetMode === 1 ? this.prng.float() * 6 : 20 + this.prng.int(300);
        this.behind = { armed: false, injectedAtMs: undefined, crashAfterMs: this.prng.int(900), resetAfterMs, crashAtMs: undefined, confirmedAtCrash: undefined, refusals: 0, ackedAfterCrash: 0 };
        this.extra.resetAfterFailure = resetAfterMs === undefined ? 'none' : resetMode === 1 ? 'soon' : 'later';
        this.sched.at(t0, () => {
          this.log('ARM a storage write failure on backup');
          this.behind!.armed = true;
          // No write reached the standby any more (the workload ended): the primary dies anyway.
          this.sched.at(this.sched.now + 2000, () => {
            if (this.behind!.injectedAtMs === undefined) this.crashBehind();
          });
        });
        break;
      }
      case 'repeated':
        this.extra.failovers = 0;
        this.extra.staleRestarts = 0;
        this.sched.at(t0, () => {
          this.crash(local);
          this.repeatedRound('backup', 'local', 2, this.sched.now);
        });
        break;
      case 'switchover': {
        const demote = this.prng.chance(0.5);
        const promoteDelayMs = this.prng.int(400);
        this.extra.demoted = demote ? 1 : 0;
        this.extra.plannedPromotion = 0;
        this.sched.at(t0, () => {
          if (!demote) {
            this.promoteStandby();
            this.sched.at(this.sched.now + 300, () => this.rejoinAsMirror());
            return;
          }
          this.log('DEMOTE local: export closed, draining');
          this.demoting = true;
          this.demoteWhenQuiescent(promoteDelayMs);
        });
        break;
      }
    }
  }

  /** standbyBehind: the injected write failure completed on the standby; plan the reset and the crash. */
  private behindFailed(): void {
    const b = this.behind!;
    b.injectedAtMs = this.sched.now;
    this.extra.injected = 1;
    const key = linkKey('local', 'backup');
    if (b.resetAfterMs !== undefined) {
      this.sched.at(this.sched.now + b.resetAfterMs, () => {
        const l = this.links.get(key)!;
        if (!l.up) return;
        this.log(`RESET ${key} (after the standby's write failure)`);
        this.disconnect(key);
        this.sched.at(this.sched.now + 5 + this.prng.int(100), () => this.connect(key));
      });
    }
    this.sched.at(this.sched.now + b.crashAfterMs, () => this.crashBehind());
  }

  /** standbyBehind: the primary dies for good; the standby's guard decides what must follow. */
  private crashBehind(): void {
    const b = this.behind!;
    if (b.crashAtMs !== undefined) return;
    b.armed = false;
    const sb = this.sites.get('backup')!.core;
    b.confirmedAtCrash = sb instanceof Standby && sb.status().inSyncConfirmed;
    b.crashAtMs = this.sched.now;
    this.extra.behindCase = b.confirmedAtCrash ? 'promoted' : 'refused';
    this.extra.crashAfterFailureMs = b.injectedAtMs === undefined ? -1 : Math.round(this.sched.now - b.injectedAtMs);
    this.log(`standbyBehind: the primary dies; backup ${b.confirmedAtCrash ? 'is' : 'is NOT'} confirmed in sync`);
    this.crash(this.sites.get('local')!);
    this.faultsDone = true;
  }

  /**
   * standbyBehind, refused: nothing can promote, so the writer never finishes its workload; the
   * run ends once the standby refused at least once, every site left is quiescent, and several
   * failover timeouts passed (time for a wrong promotion to show).
   */
  private refusedSettled(): boolean {
    const b = this.behind;
    if (b === undefined || b.confirmedAtCrash !== false || b.crashAtMs === undefined) return false;
    if (this.sched.now < b.crashAtMs + failoverTimeoutMs * 6 || b.refusals === 0) return false;
    // Not the standby's quiescence: the write that failed on it stays in its cache journal until
    // a resync supersedes it, and no resync comes without a primary.
    for (const s of this.sites.values()) if (s.core instanceof Mirror && !s.core.quiescent()) return false;
    return true;
  }

  /** The planned `geomirror promote` on the standby (site layer: Replica.promote). */
  private promoteStandby(): void {
    const b = this.sites.get('backup')!;
    const core = b.core;
    if (!(core instanceof Standby) || core.status().phase !== 'following') {
      this.log(`PROMOTE backup: refused (${core === undefined ? 'down' : core instanceof Standby ? core.status().phase : 'not a standby'})`);
      return;
    }
    this.log('PROMOTE backup (planned)');
    this.extra.plannedPromotion = 1;
    let actions: CoreAction[];
    try {
      actions = core.promote('planned switchover', this.sched.now);
    } catch (e) {
      this.fail(`backup: ${e instanceof CoreAssertionError ? 'assertion' : 'exception'} on promote: ${(e as Error).message}`);
      return;
    }
    b.run!.exec.run(actions);
  }

  /** The fault is over once the standby acts as primary (the settle check alone could end the run first). */
  private doneWhenPromoted(): void {
    if (this.actsPrimary(this.sites.get('backup')!)) this.faultsDone = true;
    else this.sched.at(this.sched.now + tickMs, () => this.doneWhenPromoted());
  }

  /** Planned demote (site layer: roles.ts demote): drain to quiescent, persist acting: mirror, restart as a mirror. */
  private demoteWhenQuiescent(promoteDelayMs: number): void {
    const s = this.sites.get('local')!;
    const c = s.core;
    if (!(c instanceof Primary) || !c.quiescent()) {
      this.sched.at(this.sched.now + tickMs, () => this.demoteWhenQuiescent(promoteDelayMs));
      return;
    }
    const st = c.status();
    this.log(`DEMOTE local: quiescent at epoch ${st.epoch}, seqNext ${st.seqNext}; restarting as a mirror`);
    // A clean stop, not a crash: the saves the core issued complete first (persistActingMirror
    // waits for them), then `acting: mirror` is durable, then the process ends.
    this.restartClean(s, { epoch: st.epoch, seqReserved: st.seqNext, acting: 'mirror' });
    this.demoting = false;
    this.sched.at(this.sched.now + promoteDelayMs, () => {
      this.promoteStandby();
      this.doneWhenPromoted();
    });
  }

  /**
   * Site layer (replica.ts onNewPrimary, roles.ts becomeFollower): the demoted local learned the
   * epoch of the next primary; it stops cleanly, persists `acting: standby` at that epoch and
   * comes back as its standby.
   */
  private followNewPrimary(epoch: bigint): void {
    const s = this.sites.get('local')!;
    this.following = false;
    if (!(s.core instanceof Mirror) || s.persist.meta.acting !== 'mirror') return;
    this.log(`FOLLOW local: learned epoch ${epoch}; restarting as the standby of backup`);
    this.restartClean(s, { epoch, seqReserved: s.persist.meta.seqReserved, acting: 'standby' });
  }

  /**
   * A clean stop, not a crash (site layer: the saves the core issued complete first, then `meta`
   * is durable, then the process ends), and the next life with links dialled again.
   */
  private restartClean(s: Site, meta: Meta): void {
    s.core = undefined;
    s.run?.end();
    s.run = undefined;
    s.life++;
    while (s.cache.inflight.length > 0) s.cache.completeOne();
    while (s.persist.inflight.length > 0) s.persist.applyOne();
    s.persist.inflight.push({ kind: 'meta', meta });
    s.persist.applyOne();
    for (const [key, l] of this.links) if (key.split('|').includes(s.name) && l.up) this.disconnect(key);
    this.startSite(s);
    for (const [key, l] of this.links) if (key.split('|').includes(s.name) && !l.cut) this.sched.at(this.sched.now + 5, () => this.connect(key));
  }

  /**
   * repeated: `next` must take over from the dead `dead`; then `dead` restarts on its stale meta,
   * is fenced and follows `next` as its standby; with rounds left, once `next` says it is in
   * sync, `next` dies and the roles swap again.
   */
  private repeatedRound(next: 'local' | 'backup', dead: 'local' | 'backup', roundsLeft: number, sinceMs: number): void {
    const n = this.sites.get(next)!;
    if (this.sched.now - sinceMs > 30_000) {
      this.fail(`repeated: ${next} did not take over from ${dead} within 30 s: ${this.describe()}`);
      return;
    }
    if (!this.actsPrimary(n) || this.primaryNow() !== next) {
      this.sched.at(this.sched.now + tickMs * 5, () => this.repeatedRound(next, dead, roundsLeft, sinceMs));
      return;
    }
    this.extra.failovers = (this.extra.failovers as number) + 1;
    this.log(`REPEATED: ${next} took over (failover ${this.extra.failovers}); ${dead} restarts on its stale meta`);
    this.sched.at(this.sched.now + 100 + this.prng.int(600), () => {
      const d = this.sites.get(dead)!;
      this.extra.staleRestarts = (this.extra.staleRestarts as number) + 1;
      this.startSite(d);
      for (const [key, l] of this.links) if (key.split('|').includes(dead) && !l.up && !l.cut) this.sched.at(this.sched.now + 5, () => this.connect(key));
      this.followWhenFenced(dead, this.sched.now, () => {
        if (roundsLeft === 0) {
          this.faultsDone = true;
          return;
        }
        this.killWhenStandbyInSync(next, dead, this.sched.now, () => this.repeatedRound(dead, next, roundsLeft - 1, this.sched.now));
      });
    });
  }

  /** Site layer (roles.ts onFenced): a fenced member of the pair persists acting: standby at the fencing epoch and comes back as its partner's standby. */
  private followWhenFenced(name: 'local' | 'backup', sinceMs: number, then: () => void): void {
    const s = this.sites.get(name)!;
    const c = s.core;
    if (!(c instanceof Primary) || !c.status().fenced) {
      if (this.sched.now - sinceMs > 30_000) {
        this.fail(`repeated: ${name}, restarted on its stale meta, was not fenced within 30 s: ${this.describe()}`);
        return;
      }
      this.sched.at(this.sched.now + tickMs * 5, () => this.followWhenFenced(name, sinceMs, then));
      return;
    }
    const fencedBy = c.status().fencedBy!;
    this.log(`REPEATED: ${name} fenced by epoch ${fencedBy}; restarting as the standby of its partner`);
    this.restartClean(s, { epoch: fencedBy > s.persist.meta.epoch ? fencedBy : s.persist.meta.epoch, seqReserved: s.persist.meta.seqReserved, acting: 'standby' });
    then();
  }

  /** Once `standby` follows `primary` and both say it is in sync (its guard open, the primary's view in sync and linked), `primary` dies. */
  private killWhenStandbyInSync(primary: 'local' | 'backup', standby: 'local' | 'backup', sinceMs: number, then: () => void): void {
    const sb = this.sites.get(standby)!.core;
    const act = this.active();
    const view = act?.primary.name === primary ? this.innerPrimary(act.core)?.mirrors.find((m) => m.peer === standby) : undefined;
    const ready = sb instanceof Standby && sb.status().phase === 'following' && sb.status().inSyncConfirmed && view?.sync === 'inSync' && view.link === 'ready';
    if (!ready) {
      if (this.sched.now - sinceMs > 30_000) {
        this.fail(`repeated: ${standby} never became an in-sync standby of ${primary} within 30 s: ${this.describe()}`);
        return;
      }
      this.sched.at(this.sched.now + tickMs * 5, () => this.killWhenStandbyInSync(primary, standby, sinceMs, then));
      return;
    }
    this.sched.at(this.sched.now + this.prng.int(300), () => {
      this.log(`REPEATED: ${standby} is an in-sync standby; ${primary} dies`);
      this.crash(this.sites.get(primary)!);
      then();
    });
  }

  private innerPrimary(core: Primary | Standby): ReturnType<Primary['status']> | undefined {
    const st = core.status();
    return st.role === 'primary' ? st : st.phase === 'primary' ? (st.inner as ReturnType<Primary['status']>) : undefined;
  }

  /** standbyCrash: decide how the next crash of the standby is triggered (see execute/onHostAck). */
  private armStandbyCrash(): void {
    const modes = ['decided', 'meta', 'promoted', 'afterWrites'] as const;
    const b = this.sites.get('backup')!;
    const mode = modes[this.prng.int(modes.length)]!;
    const writes = 1 + this.prng.int(8);
    this.standbyCrashPlan = { mode, writes, life: b.life, armed: true };
    if (b.core instanceof Primary) {
      // Restarted as the primary already: crash it again while it serves (or resyncs).
      this.standbyCrashPlan.mode = 'afterWrites';
      this.ackedThisLife = 0;
      this.standbyCrashFallback(b, 300 + this.prng.int(1200));
    }
  }

  /** A crash of the standby at `atMs` unless one of this plan already happened. */
  private standbyCrashAt(atMs: number, why: string): void {
    const plan = this.standbyCrashPlan;
    const b = this.sites.get('backup')!;
    if (plan === undefined || !plan.armed || plan.life !== b.life) return;
    plan.armed = false;
    const powerCut = this.prng.chance(0.3);
    const restartMs = 20 + this.prng.int(300);
    this.sched.at(atMs, () => {
      if (b.life !== plan.life || b.core === undefined) return;
      this.extra.standbyCrashes = (this.extra.standbyCrashes as number) + 1;
      this.extra.ackedBeforeStandbyCrash = (this.extra.ackedBeforeStandbyCrash as number) + this.ackedThisLife;
      // Where the promotion stood: bitmapSets / the acting: primary save still in flight, or done.
      const c = b.core;
      const phase = c instanceof Standby ? c.status().phase : 'acting-primary';
      const inflight = b.persist.inflight.map((u) => (u.kind === 'meta' ? (u.meta.acting === 'primary' ? 'M' : 'm') : u.kind === 'set' ? 'S' : 'c')).join('');
      this.crash(b);
      if (powerCut) b.disk.powerCut(this.prng);
      const where = `${phase}${inflight === '' ? '' : `[${inflight}]`}->${b.persist.meta.acting ?? 'none'}`;
      this.extra.standbyCrashModes = `${this.extra.standbyCrashModes as string}${this.extra.standbyCrashModes === '' ? '' : ' '}${why}${powerCut ? '+powerCut' : ''}@${where}`;
      const promotedBefore = phase === 'primary' || phase === 'acting-primary';
      this.sched.at(this.sched.now + restartMs, () => {
        this.startSite(b);
        // Its promotion was complete, so `acting: primary` was durable (and sticky through the
        // reservations its Primary persisted since): it must come back as that primary, not
        // as a standby that would fail over a second time.
        if (promotedBefore && !(b.core instanceof Primary)) this.fail(`backup crashed as the primary of epoch ${this.epochOf(b)} but restarted as a ${b.core?.constructor.name} (persisted meta ${JSON.stringify(b.persist.meta, (_k, v) => (typeof v === 'bigint' ? Number(v) : v))})`);
        if (b.core instanceof Primary) this.extra.restartedAsPrimary = (this.extra.restartedAsPrimary as number) + 1;
        for (const key of this.links.keys()) if (key.split('|').includes(b.name)) this.sched.at(this.sched.now + 5, () => this.connect(key));
        this.ackedThisLife = 0;
        if (--this.standbyCrashesLeft > 0) this.armStandbyCrash();
        else this.faultsDone = true;
      });
    });
  }

  private standbyCrashFallback(b: Site, afterMs: number): void {
    const plan = this.standbyCrashPlan!;
    this.sched.at(this.sched.now + afterMs, () => {
      if (plan.armed && plan.life === b.life) this.standbyCrashAt(this.sched.now, `${plan.mode}:fallback`);
    });
  }

  /** standbyCrash hooks: what the standby just asked for decides when its crash comes. */
  private watchStandby(s: Site, a: CoreAction): void {
    const plan = this.standbyCrashPlan;
    if (plan === undefined || !plan.armed || s.name !== 'backup' || plan.life !== s.life) return;
    const now = this.sched.now;
    if (a.type === 'log' && a.event === 'failover_decided' && plan.mode === 'decided') {
      // bitmapSets just issued: crash before, between or after their completions.
      this.standbyCrashAt(now + this.prng.float() * 2, 'decided');
    } else if (a.type === 'metaPersist' && a.meta.acting === 'primary' && plan.mode === 'meta') {
      // Strictly before the completion: the crash keeps or loses this save at random.
      this.standbyCrashAt(now + this.prng.float() * (s.run!.persistDoneAtMs - now) * 0.999, 'meta');
    } else if (a.type === 'log' && a.event === 'promoted') {
      this.ackedThisLife = 0;
      if (plan.mode === 'promoted') this.standbyCrashAt(now + this.prng.float() * 20, 'promoted');
      else if (plan.mode === 'afterWrites') this.standbyCrashFallback(s, 1500);
    }
  }

  private crash(s: Site): void {
    this.log(`${s.name}: CRASH`);
    s.core = undefined;
    s.run?.end();
    s.run = undefined;
    s.life++;
    s.cache.crash(this.prng);
    s.persist.crash(this.prng);
    for (const [key, l] of this.links) if (key.split('|').includes(s.name) && l.up) this.disconnect(key);
    // The host's connection to it is gone: what it had in flight has an unknown outcome.
    for (const w of this.writes) {
      if (w.outcome === 'pending' && w.site === s.name) {
        w.outcome = 'unknown';
        this.stats.unknown!++;
      }
    }
  }

  /** The site acts as the primary now: a promoted standby, or a Primary core that is not fenced. */
  private actsPrimary(s: Site): boolean {
    const c = s.core;
    if (c instanceof Standby) return c.status().phase === 'primary';
    return c instanceof Primary && !c.status().fenced;
  }

  /** The dead primary comes back as the primary of its old epoch: it must be fenced. */
  private restartOldPrimary(): void {
    const s = this.sites.get('local')!;
    if (!this.actsPrimary(this.sites.get('backup')!)) {
      // Back before the failover finished would be a plain restart, not this scenario.
      this.sched.at(this.sched.now + 100, () => this.restartOldPrimary());
      return;
    }
    this.startSite(s);
    for (const [key, l] of this.links) if (key.split('|').includes('local') && !l.up && !l.cut) this.sched.at(this.sched.now + 5, () => this.connect(key));
    this.sched.at(this.sched.now + 400, () => this.rejoinAsMirror());
  }

  /** The old primary, once fenced, restarts as a mirror of the new epoch (issue 10 item 4). */
  private rejoinAsMirror(): void {
    const s = this.sites.get('local')!;
    const c = s.core;
    if (c instanceof Primary && !c.status().fenced) {
      // Not fenced yet (link still reconnecting): try again shortly.
      this.sched.at(this.sched.now + 100, () => this.rejoinAsMirror());
      return;
    }
    if (c !== undefined) this.crash(s);
    // Site layer (roles.ts becomeFollower): `acting: standby` at the epoch that fenced it is
    // durable before the next life, which the acting record makes the new primary's standby.
    const fencedBy = c instanceof Primary ? c.status().fencedBy : undefined;
    s.persist.inflight.push({ kind: 'meta', meta: { epoch: fencedBy !== undefined && fencedBy > s.persist.meta.epoch ? fencedBy : s.persist.meta.epoch, seqReserved: s.persist.meta.seqReserved, acting: 'standby' } });
    s.persist.applyOne();
    this.startSite(s);
    for (const key of this.links.keys()) if (key.split('|').includes('local')) this.sched.at(this.sched.now + 5, () => this.connect(key));
    this.faultsDone = true;
  }

  /**
   * A new process life. The core follows the site layer's rule (src/site/replica.ts constructor):
   * the configured role (local primary, backup standby, east/west mirrors) unless the persisted
   * meta says otherwise: acting `mirror` makes any site a Mirror; a standby acting `primary` is
   * the Primary of the persisted epoch for its old primary and the mirrors, with the persisted
   * dirty bitmaps (passed in `recovered` below).
   */
  private startSite(s: Site): void {
    s.life++;
    const cfg = { self: s.name, volumeBytes, blockBytes, limits: this.limits };
    const configured = s.name === 'local' ? 'primary' : s.name === 'backup' ? 'standby' : 'mirror';
    const acting = s.persist.meta.acting;
    // The pair rule of src/site/cores.ts (issue 16 item 5): local and backup each run as the
    // primary (acting primary, or the configured primary with no acting) or as the standby that
    // follows the other (acting standby, or the configured standby); acting mirror is a demoted
    // primary waiting for the next primary's epoch (then it follows it as its standby).
    const partner = s.name === 'local' ? 'backup' : 'local';
    if (s.name === 'local') this.localLifeEpoch = s.persist.meta.epoch;
    let role: string;
    if (configured === 'mirror' || acting === 'mirror') {
      role = acting === 'mirror' ? 'mirror (acting)' : 'mirror';
      s.core = new Mirror({ ...cfg, keepTail: true });
    } else if ((configured === 'primary' && acting === undefined) || acting === 'primary') {
      role = acting === 'primary' ? `primary (acting, epoch ${s.persist.meta.epoch})` : 'primary';
      const mirrors = [partner, ...names.filter((n) => n !== s.name && n !== partner)];
      s.core = new Primary({ ...cfg, mirrors, onMirrorLoss: configured === 'primary' ? this.oldPolicy : 'degrade', standby: partner, ...(acting === 'primary' ? { standbyArm: 'inSync' as const } : {}), proveAuthority: { sites: 4, witnesses: [] } });
    } else {
      role = configured === 'standby' ? 'standby' : `standby of ${partner} (acting, epoch ${s.persist.meta.epoch})`;
      s.core = new Standby({ ...cfg, primary: partner, mirrors: ['east', 'west'], failoverTimeoutMs, queryIntervalMs: 200, onMirrorLoss: 'degrade' });
    }
    this.log(`${s.name}: START as ${role}`);
    const p = this.prng;
    const delays: SimDelays = {
      cacheMs: () => 0.2 + p.float(),
      writeMs: () => 0.5 + p.float() * 3,
      readMs: () => 0.5 + p.float() * 2,
      flushMs: () => 1 + p.float() * 3,
      persistMs: () => 0.3 + p.float(),
    };
    s.run = new SimLife(this.sched, s, delays, s.core, {
      send: (peer, msg) => this.send(s, peer, msg),
      close: (peer) => {
        const key = linkKey(s.name, peer);
        this.disconnect(key);
        this.sched.at(this.sched.now + 5 + this.prng.int(100), () => this.connect(key));
      },
      ack: (id, error, data) => {
        if (id >= readIdBase) this.onReadAck(s, id, error, data);
        else this.hostAcked(s, id, error?.kind);
      },
      log: (level, event, fields) => this.log(`${s.name}: ${level} ${event} ${JSON.stringify(fields, (_k, v) => (typeof v === 'bigint' ? Number(v) : v))}`),
      fatal: (err) => this.fail(`${s.name}: ${err instanceof CoreAssertionError ? 'assertion' : 'exception'}: ${err.message}`),
      observe: (a) => this.observed(s, a),
      writeFault: (offsetBytes, payload) => {
        if (this.behind?.armed !== true || s.name !== 'backup' || !(s.core instanceof Standby) || s.core.status().phase !== 'following') return undefined;
        // standbyBehind: this write fails on the standby's storage (nothing lands on its disk).
        this.behind.armed = false;
        this.log(`backup: INJECT storage write failure at ${offsetBytes}+${payload.byteLength}`);
        return { sense: senseOf('injected medium error (standbyBehind)', 0x3, 0x0c, 0x00), completed: () => this.behindFailed() };
      },
    }, this.makeExecutor?.(s.name, (delayMs, fn) => {
      const life = s.life;
      this.sched.at(this.sched.now + delayMs, () => {
        if (s.life === life) fn();
      });
    }));
    this.feed(s, { type: 'start', recovered: { meta: s.persist.meta, cacheEntries: s.cache.list(), dirtyRegions: s.persist.dirtyRegions() } });
  }

  // -------------------------------------------------------------------------------------------
  // Network: full mesh, FIFO per direction, a cut link drops everything and stays down.

  private connect(key: string): void {
    const l = this.links.get(key)!;
    if (l.up || l.cut) return;
    const [a, b] = key.split('|') as [PeerId, PeerId];
    if (this.sites.get(a)!.core === undefined || this.sites.get(b)!.core === undefined) return;
    l.up = true;
    l.conn++;
    this.feed(this.sites.get(a)!, { type: 'peerUp', peer: b });
    this.feed(this.sites.get(b)!, { type: 'peerUp', peer: a });
    // The link's own heartbeats, both ways (src/net/link.ts): each end hears the other as peerHeard.
    for (const [x, y] of [[a, b], [b, a]] as const) {
      const sx = this.sites.get(x)!;
      const sy = this.sites.get(y)!;
      startHeartbeats(this.sched, l, () => ({ life: sx.run, name: x }), () => ({ life: sy.run }), this.limits.heartbeatIntervalMs, () => this.deliverTime(l, y));
    }
  }

  /** FIFO per direction. */
  private deliverTime(l: Link, to: PeerId): number {
    const t = Math.max(l.lastDeliverMs[to] ?? 0, this.sched.now + l.delayMs + this.prng.float() * 2);
    l.lastDeliverMs[to] = t;
    return t;
  }

  private disconnect(key: string): void {
    const l = this.links.get(key)!;
    if (!l.up) return;
    l.up = false;
    l.conn++;
    l.lastDeliverMs = {};
    const [a, b] = key.split('|') as [PeerId, PeerId];
    for (const [x, y] of [[a, b], [b, a]] as const) {
      const s = this.sites.get(x)!;
      if (s.core !== undefined) this.feed(s, { type: 'peerDown', peer: y });
    }
  }

  private cut(key: string): void {
    this.log(`CUT ${key}`);
    this.links.get(key)!.cut = true;
    this.disconnect(key);
  }

  private heal(key: string): void {
    this.log(`HEAL ${key}`);
    this.links.get(key)!.cut = false;
    this.sched.at(this.sched.now + 5 + this.prng.int(50), () => this.connect(key));
  }

  private send(from: Site, to: PeerId, msg: PeerMsg): void {
    const l = this.links.get(linkKey(from.name, to))!;
    if (!l.up) return; // executor contract 4: dropped silently
    const conn = l.conn;
    const t = this.deliverTime(l, to);
    this.sched.at(t, () => {
      if (l.conn !== conn || !l.up) return;
      const dst = this.sites.get(to)!;
      if (dst.core !== undefined) this.feed(dst, { type: 'recv', peer: from.name, msg });
    });
  }

  // -------------------------------------------------------------------------------------------
  // Executor

  private feed(s: Site, ev: CoreEvent): void {
    s.run?.feed(ev);
  }

  /** Every action a site's executor ran: the fault plans that hang on them. */
  private observed(s: Site, a: CoreAction): void {
    if (s.name === 'local' && s.persist.meta.acting === 'mirror' && s.core instanceof Mirror && !this.following) {
      const epoch = s.core.status().epoch;
      if (epoch > this.localLifeEpoch) {
        this.following = true;
        this.sched.at(this.sched.now + 1, () => this.followNewPrimary(epoch));
      }
    }
    if (this.standbyCrashPlan !== undefined) this.watchStandby(s, a);
    if (this.behind !== undefined && s.name === 'backup' && a.type === 'log' && a.event === 'failover_refused') this.behind.refusals++;
  }

  // -------------------------------------------------------------------------------------------
  // Host writer: QD writes in flight to the current target; switches to the standby once it
  // reports itself primary (the NBD client reconnecting to the standby's export).

  private outstanding(): number {
    return this.writes.filter((w) => w.outcome === 'pending').length;
  }

  /** The site whose export the host writes to: the promoted standby once it is primary, else the old primary unless it is dead, fenced or being demoted. */
  private primaryNow(): PeerId | undefined {
    // Of the pair, the one acting as primary in the newest epoch (a restarted stale primary is
    // not fenced yet for a moment, but its epoch is older).
    let best: PeerId | undefined;
    let bestEpoch = -1n;
    for (const name of ['backup', 'local'] as const) {
      const s = this.sites.get(name)!;
      if (name === 'local' && this.demoting) continue;
      if (!this.actsPrimary(s)) continue;
      const e = s.core!.status().epoch;
      if (e > bestEpoch) [best, bestEpoch] = [name, e];
    }
    return best;
  }

  private pump(): void {
    if (this.stopped) return;
    const next = this.primaryNow();
    if (next !== this.target) {
      // Writes in flight at the previous primary: their outcome is unknown to the host (unless
      // it is being demoted: it drains them and acks them before it stops).
      for (const w of this.writes) {
        if (w.outcome === 'pending' && w.site === this.target && !(this.demoting && w.site === 'local')) {
          w.outcome = 'unknown';
          this.stats.unknown!++;
        }
      }
      this.target = next;
    }
    const t = this.target === undefined ? undefined : this.sites.get(this.target)!;
    if (this.group !== undefined) {
      this.groupPump(this.group, t);
    } else if (this.randomInVolumes !== undefined) {
      if (t !== undefined && t.core !== undefined && this.issued < this.hostOps && this.outstanding() < this.qd) this.randomVolumeWrite(t, this.randomInVolumes, this.prng);
    } else if (t !== undefined && t.core !== undefined && this.issued < this.hostOps && this.outstanding() < this.qd) {
      // One write per pump, pumps spread out, so the workload spans the fault and the failover.
      const lenBlocks = 1 + this.prng.int(8);
      const offBlocks = this.prng.int(volumeBytes / blockBytes - lenBlocks + 1);
      const id = this.writes.length + 1;
      const w: HostWrite = { id, offsetBytes: offBlocks * blockBytes, lengthBytes: lenBlocks * blockBytes, site: t.name, life: t.life, outcome: 'pending' };
      this.writes.push(w);
      this.issued++;
      for (let b = 0; b < lenBlocks; b++) this.blockWrites[offBlocks + b]!.push(id);
      const payload = new Uint8Array(w.lengthBytes);
      const dv = new DataView(payload.buffer);
      for (let b = 0; b < lenBlocks; b++) {
        dv.setUint32(b * blockBytes, id);
        dv.setUint32(b * blockBytes + 4, offBlocks + b);
      }
      this.feed(t, { type: 'hostWrite', id, offsetBytes: w.offsetBytes, lengthBytes: w.lengthBytes, fua: this.prng.chance(0.2), payload });
    }
    this.sched.at(this.sched.now + 2 + this.prng.int(this.pumpGapMs), () => this.pump());
  }

  // -------------------------------------------------------------------------------------------
  // Multi-volume group workload (FailoverOptions.volumes, test/sim/group.ts)

  /** Every host op the workload plans was issued and completed, and the cut of the primary now was read. */
  private workloadDone(): boolean {
    const g = this.group;
    if (g === undefined) return this.issued >= this.hostOps;
    if (g.nextRecord <= g.recordsTarget || g.pendingRecord !== undefined || g.randomIssued < g.randomTarget || g.recovery !== undefined) return false;
    const now = this.primaryNow();
    return now === undefined || g.verified === `${now}:${this.sites.get(now)!.life}`;
  }

  /**
   * The database on the host: after a failover (a new primary, or the same one in a new life) it
   * reads every volume's log first and goes on after the cut it found; otherwise it writes the
   * next record once the previous one was acked, and (with load) random writes beside.
   */
  private groupPump(g: Group, t: Site | undefined): void {
    if (g.pendingRecord !== undefined && g.pendingRecord.outcome !== 'pending') g.pendingRecord = undefined;
    if (t === undefined || t.core === undefined) return;
    const key = `${t.name}:${t.life}`;
    g.verified ??= key; // the first primary: nothing was written yet
    if (key !== g.verified) {
      if (g.pendingRecord === undefined && g.recovery?.key !== key) this.startRecovery(g, t, key);
    } else if (g.pendingRecord === undefined && g.nextRecord <= g.recordsTarget) {
      this.recordWrite(g, t, g.nextRecord);
    }
    const randomPending = this.writes.filter((w) => w.outcome === 'pending' && w.record === undefined).length;
    if (g.randomIssued < g.randomTarget && randomPending < this.qd) {
      g.randomIssued++;
      this.randomVolumeWrite(t, g.layout, g.prng);
    }
  }

  private recordWrite(g: Group, t: Site, k: number): void {
    const place = recordPlace(g.layout, k);
    const lenBlocks = g.layout.recordBlocks;
    const w = this.issueWrite(t, place.offsetBytes / blockBytes, lenBlocks, g.prng.chance(0.2), k);
    g.pendingRecord = w;
    if (k <= g.issuedMax) this.stats.recordsReissued!++;
    g.issuedMax = Math.max(g.issuedMax, k);
    this.stats.records!++;
  }

  /** A random write inside one volume's data area (through that volume's export: never across its end). */
  private randomVolumeWrite(t: Site, layout: GroupLayout, p: Prng): void {
    const v = layout.volumes[p.int(layout.volumes.length)]!;
    const dataBlocks = (v.sizeBytes - v.logBytes) / blockBytes;
    const lenBlocks = 1 + p.int(Math.min(8, dataBlocks));
    const offBlocks = (v.offsetBytes + v.logBytes) / blockBytes + p.int(dataBlocks - lenBlocks + 1);
    this.issueWrite(t, offBlocks, lenBlocks, p.chance(0.2), undefined);
  }

  private issueWrite(t: Site, offBlocks: number, lenBlocks: number, fua: boolean, record: number | undefined): HostWrite {
    const id = this.writes.length + 1;
    const w: HostWrite = { id, offsetBytes: offBlocks * blockBytes, lengthBytes: lenBlocks * blockBytes, site: t.name, life: t.life, outcome: 'pending', ...(record !== undefined ? { record } : {}) };
    this.writes.push(w);
    this.issued++;
    for (let b = 0; b < lenBlocks; b++) this.blockWrites[offBlocks + b]!.push(id);
    const payload = new Uint8Array(w.lengthBytes);
    if (record !== undefined) fillRecord(this.group!.layout, record, payload);
    const dv = new DataView(payload.buffer);
    for (let b = 0; b < lenBlocks; b++) {
      dv.setUint32(b * blockBytes, id);
      dv.setUint32(b * blockBytes + 4, offBlocks + b);
    }
    this.feed(t, { type: 'hostWrite', id, offsetBytes: w.offsetBytes, lengthBytes: w.lengthBytes, fua, payload });
    return w;
  }

  /** A host write completed (or the host gave up on it): the record writer follows. */
  private hostAcked(s: Site, id: number, error: string | undefined): void {
    const w = this.writes[id - 1];
    const before = w?.outcome;
    this.onHostAck(s, id, error);
    const g = this.group;
    if (g === undefined || w?.record === undefined) return;
    const k = w.record;
    if (w.outcome === 'acked' && before !== 'acked') {
      g.ackedMax = Math.max(g.ackedMax, k);
      this.stats.recordsAcked!++;
      // A late ack (after the host switched away and read the new primary's cut): the record
      // must be inside that cut, or the new primary lost a write the old one acked.
      if (before === 'unknown' && g.check && k > g.lastCut) this.fail(`record ${k} was acked by ${s.name} after the failover, but the new primary's cut ends at record ${g.lastCut}`);
    }
    if (g.pendingRecord !== w) return;
    g.pendingRecord = undefined;
    if (w.outcome === 'acked') g.nextRecord = k + 1;
    // failed (busy, fenced: refused before it was ordered): the same record again; unknown: the
    // recovery on the next primary decides where the log goes on.
  }

  /** After a failover: read every volume's log on the new primary (through its exports). */
  private startRecovery(g: Group, t: Site, key: string): void {
    this.log(`GROUP: recovery read of ${g.layout.volumes.length} volume logs on ${key}`);
    const rec: Recovery = { key, site: t.name, life: t.life, parts: g.layout.volumes.map(() => undefined), left: g.layout.volumes.length, attempts: 0 };
    g.recovery = rec;
    g.lastCut = Number.MAX_SAFE_INTEGER;
    for (const v of g.layout.volumes) this.readLog(rec, v.index);
  }

  /** A host read of volume v's log: from the site's own storage where the core says it is whole, else through the core (a mirror may serve it), as host-api.ts reads. */
  private readLog(rec: Recovery, volume: number): void {
    const g = this.group!;
    if (g.recovery !== rec) return;
    const s = this.sites.get(rec.site)!;
    const core = s.core;
    if (s.life !== rec.life || core === undefined || core instanceof Mirror) return; // gone: the next primary gets a recovery of its own
    const v = g.layout.volumes[volume]!;
    if (this.readsIgnoreCore || core.readable(v.offsetBytes, v.logBytes)) {
      const data = s.disk.read(v.offsetBytes, v.logBytes);
      s.run!.later(0.5 + this.prng.float(), () => this.logRead(rec, volume, undefined, data));
      return;
    }
    const id = this.readNext++;
    this.reads.set(id, { rec, volume });
    this.stats.recoveryReadsByMirror!++;
    this.feed(s, { type: 'hostRead', id, offsetBytes: v.offsetBytes, lengthBytes: v.logBytes });
  }

  private onReadAck(s: Site, id: number, error: HostError | undefined, data: Uint8Array | undefined): void {
    const r = this.reads.get(id);
    if (r === undefined) {
      this.fail(`${s.name} completed host read ${id} it was never given`);
      return;
    }
    this.reads.delete(id);
    if (r.rec.site !== s.name || r.rec.life !== s.life) return;
    this.logRead(r.rec, r.volume, error, data);
  }

  private logRead(rec: Recovery, volume: number, error: HostError | undefined, data: Uint8Array | undefined): void {
    const g = this.group!;
    if (g.recovery !== rec) return;
    if (error !== undefined || data === undefined) {
      // busy (still promoting, queue full) or no copy could serve it yet: again after a backoff, capped.
      if (++rec.attempts > 40) {
        this.fail(`the recovery read of volume ${volume}'s log on ${rec.site} failed ${rec.attempts} times, last: ${error?.message ?? 'no data'}`);
        return;
      }
      this.sched.at(this.sched.now + Math.min(200, 5 * 2 ** Math.min(rec.attempts, 6)), () => this.readLog(rec, volume));
      return;
    }
    if (rec.parts[volume] === undefined) rec.left--;
    rec.parts[volume] = data;
    if (rec.left > 0) return;
    g.recovery = undefined;
    const epoch = this.sites.get(rec.site)!.core!.status().epoch;
    const where = `after failover: ${rec.site} (epoch ${epoch}, life ${rec.life}) serves`;
    const res = checkGroupCut(g.layout, (v) => rec.parts[v]!, g.ackedMax, g.issuedMax, where);
    this.stats.groupChecks!++;
    this.stats.recoveries!++;
    // The record in flight when the primary was lost made it into the cut (else it is issued again).
    if (res.cut > g.ackedMax) this.stats.recoveredInFlight!++;
    this.log(`GROUP: ${rec.key} serves the cut at record ${res.cut} (acked up to ${g.ackedMax}, issued up to ${g.issuedMax})${res.error !== undefined ? ` FAIL ${res.error}` : ''}`);
    if (res.error !== undefined && g.check) {
      this.fail(res.error);
      return;
    }
    g.verified = rec.key;
    g.lastCut = res.cut;
    g.nextRecord = res.cut + 1;
  }

  /** The group cut on a site's storage (after settling: every in-sync replica). */
  private checkGroupOn(s: Site, what: string): void {
    const g = this.group;
    if (g === undefined || !g.check || this.failures.length > 0) return;
    const res = checkGroupCut(g.layout, (v) => s.disk.read(g.layout.volumes[v]!.offsetBytes, g.layout.volumes[v]!.logBytes), g.ackedMax, g.issuedMax, `${what} ${s.name}'s storage`);
    if (res.error !== undefined) this.fail(res.error);
    else this.stats.groupChecks!++;
  }

  /** With volumes: no byte outside every volume's slice was ever written (a volume's export is a window onto its slice). */
  private checkOutsideVolumes(s: Site): void {
    const layout = this.group?.layout ?? this.randomInVolumes;
    if (layout === undefined || this.failures.length > 0) return;
    const inside = (at: number): boolean => layout.volumes.some((v) => v.offsetBytes <= at && at < v.offsetBytes + v.sizeBytes);
    for (let at = 0; at < volumeBytes; at += blockBytes) {
      if (!inside(at) && s.disk.cur.subarray(at, at + blockBytes).some((b) => b !== 0)) {
        this.fail(`block ${at / blockBytes} on ${s.name} lies outside every volume (${this.extra.layout as string}) but holds data`);
        return;
      }
    }
  }

  private onHostAck(s: Site, id: number, error: string | undefined): void {
    const w = this.writes[id - 1];
    if (w === undefined || w.site !== s.name || w.life !== s.life) {
      this.fail(`${s.name} acked host op ${id} it was never given`);
      return;
    }
    if (w.outcome !== 'pending') {
      // The host gave up on it at the switch; a success that comes later is still a write the old
      // primary acked, so it must survive too (checked as acked; none is expected in practice,
      // since every host ack needs the standby's ack and the standby drops old-epoch frames from
      // its decision on).
      if (w.outcome === 'unknown' && error === undefined) {
        w.outcome = 'acked';
        this.extra.lateAcked = ((this.extra.lateAcked as number | undefined) ?? 0) + 1;
        this.log(`${s.name}: late ack of host write ${id} (after the host switched away)`);
      }
      return;
    }
    if (error === undefined) {
      w.outcome = 'acked';
      this.stats.acked!++;
      if (this.behind?.crashAtMs !== undefined) this.behind.ackedAfterCrash++;
      if (s.name === 'backup') {
        this.stats.ackedByNewPrimary!++;
        this.ackedThisLife++;
        const plan = this.standbyCrashPlan;
        if (plan !== undefined && plan.mode === 'afterWrites' && this.ackedThisLife >= plan.writes) this.standbyCrashAt(this.sched.now + this.prng.float() * 10, 'afterWrites');
      }
      const epoch = this.epochOf(s);
      let set = this.ackers.get(epoch);
      if (set === undefined) this.ackers.set(epoch, (set = new Set()));
      set.add(s.name);
      if (set.size > 1) this.fail(`two sites acked host writes in epoch ${epoch}: ${[...set].join(', ')}`);
      return;
    }
    // busy / fenced: the site refused it before assigning a seq; `io` would be a real error,
    // except in standbyBehind under `block`: the write that failed on the standby fails the host.
    const injected = error === 'io' && this.behind?.injectedAtMs !== undefined && this.oldPolicy === 'block';
    w.outcome = error === 'io' && !injected ? 'unknown' : 'failed';
    this.stats[error === 'busy' ? 'busy' : 'failed']!++;
    if (injected) this.extra.hostIoErrors = ((this.extra.hostIoErrors as number | undefined) ?? 0) + 1;
    else if (error === 'io') this.fail(`host write ${id} failed with an I/O error at ${s.name} (no storage errors are injected)`);
  }

  private epochOf(s: Site): Epoch {
    const c = s.core!;
    return c.status().epoch;
  }

  // -------------------------------------------------------------------------------------------
  // Settling and checks

  private active(): { primary: Site; core: Primary | Standby } | undefined {
    const backup = this.sites.get('backup')!;
    const local = this.sites.get('local')!;
    const cands = [backup, local].filter((s) => s.core instanceof Primary || (s.core instanceof Standby && s.core.status().phase === 'primary'));
    const live = cands.filter((s) => this.actsPrimary(s));
    const pick = (live.length > 0 ? live : cands).sort((a, b) => Number(b.core!.status().epoch - a.core!.status().epoch))[0];
    return pick === undefined ? undefined : { primary: pick, core: pick.core as Primary | Standby };
  }

  /** The standby promoted: it is a Standby in phase primary, or it restarted as the acting Primary. */
  private promoted(): boolean {
    const c = this.sites.get('backup')!.core;
    return c instanceof Primary || (c instanceof Standby && c.status().phase === 'primary');
  }

  private settled(): boolean {
    const act = this.active();
    if (act === undefined) return false;
    const { core } = act;
    const st = core.status();
    if (st.role === 'standby' && st.phase !== 'primary') return false;
    const ps = st.role === 'primary' ? st : (st.inner as ReturnType<Primary['status']>);
    if (ps.cacheEntries > 0 || ps.hostQueued > 0 || ps.writesInflight > 0) return false;
    // Every mirror that is alive must be back in sync and linked.
    for (const m of ps.mirrors) {
      const alive = this.sites.get(m.peer)!.core !== undefined;
      if (alive && (m.sync !== 'inSync' || m.link !== 'ready')) return false;
    }
    for (const s of this.sites.values()) if (s.core instanceof Mirror && !s.core.quiescent()) return false;
    return true;
  }

  private finalChecks(): void {
    const promoted = this.promoted();
    const b = this.behind;
    const mustPromote = this.scenario !== 'cutStandby' && this.scenario !== 'none' && b?.confirmedAtCrash !== false;
    if (promoted !== mustPromote) this.fail(`scenario ${this.scenario}: standby ${promoted ? 'promoted' : 'did not promote'}${b === undefined ? '' : ` (confirmed in sync when the primary died: ${b.confirmedAtCrash})`}`);
    if (b !== undefined && b.confirmedAtCrash === false) {
      this.refusedChecks(b);
      return;
    }
    const act = this.active();
    if (act === undefined) {
      this.fail(`no site acts as primary after settling: ${this.describe()}`);
      return;
    }
    const { primary, core } = act;
    const st = core.status();
    const ps = st.role === 'primary' ? st : (st.inner as ReturnType<Primary['status']>);
    const replicas = [primary, ...ps.mirrors.filter((m) => this.sites.get(m.peer)!.core !== undefined && m.sync === 'inSync').map((m) => this.sites.get(m.peer)!)];
    this.stats.replicas = replicas.length;
    const expected = this.scenario === 'crash' || this.scenario === 'standbyCrash' || this.scenario === 'standbyBehind' ? 3 : 4; // every site that is alive is back in sync
    if (replicas.length !== expected) this.fail(`${replicas.length} replicas in sync after settling, expected ${expected}`);
    for (const r of replicas) this.checkGroupOn(r, r === primary ? 'after settling, the primary' : 'after settling, in-sync replica');
    this.checkOutsideVolumes(primary);
    const ref = primary.disk.cur;
    for (const r of replicas.slice(1)) {
      if (Buffer.compare(Buffer.from(ref), Buffer.from(r.disk.cur)) !== 0) {
        this.fail(`${r.name} differs from the primary ${primary.name} after settling`);
        return;
      }
    }
    this.checkAckedOn(primary);
  }

  /** standbyBehind, refused: no promotion, no host ack after the crash, the guard still closed and said so. */
  private refusedChecks(b: NonNullable<FailoverSim['behind']>): void {
    if (b.ackedAfterCrash > 0) this.fail(`${b.ackedAfterCrash} host writes acked after the primary died, with no promotion`);
    const sb = this.sites.get('backup')!.core;
    if (!(sb instanceof Standby) || sb.status().phase !== 'following') this.fail(`backup is not a following standby after a refused failover: ${this.describe()}`);
    else if (sb.status().inSyncConfirmed) this.fail('backup says inSyncConfirmed after a refused failover');
    if (b.refusals === 0) this.fail('backup never logged failover_refused');
    this.stats.replicas = 0;
    // No replica to compare: the acked writes are at least on the dead primary's disk.
    this.checkGroupOn(this.sites.get('local')!, 'no failover: the dead primary');
    this.checkAckedOn(this.sites.get('local')!);
  }

  /** Every block of `site` holds its last host-acked write or a write issued after it. */
  private checkAckedOn(primary: Site): void {
    const ref = primary.disk.cur;
    const dv = new DataView(ref.buffer, ref.byteOffset, ref.byteLength);
    for (let b = 0; b < this.blockWrites.length; b++) {
      const ids = this.blockWrites[b]!;
      let lastAcked = -1;
      for (let i = 0; i < ids.length; i++) if (this.writes[ids[i]! - 1]!.outcome === 'acked') lastAcked = i;
      const got = dv.getUint32(b * blockBytes);
      if (got !== 0 && dv.getUint32(b * blockBytes + 4) !== b) {
        this.fail(`block ${b} on ${primary.name} holds data of block ${dv.getUint32(b * blockBytes + 4)}`);
        return;
      }
      const pos = got === 0 ? -1 : ids.indexOf(got);
      if (got !== 0 && pos < 0) {
        this.fail(`block ${b} on ${primary.name} holds write ${got}, which never touched it`);
        return;
      }
      if (pos < lastAcked) {
        this.fail(`block ${b} on ${primary.name}: acked write ${ids[lastAcked]} lost (holds ${got === 0 ? 'zeros' : `write ${got}`})`);
        return;
      }
    }
  }

  private describe(): string {
    return [...this.sites.values()].map((s) => `${s.name}=${s.core === undefined ? 'down' : JSON.stringify(s.core.status(), (_k, v) => (typeof v === 'bigint' ? Number(v) : v))}`).join(' ');
  }

  private fail(msg: string): void {
    this.failures.push(`seed ${this.seed} (${this.scenario}): ${msg}`);
  }

  private log(line: string): void {
    this.trace?.(`${this.sched.now.toFixed(2)} ${line}`);
  }
}
