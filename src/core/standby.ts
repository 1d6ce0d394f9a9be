// The standby site's controller (claims 8, 9, 13; issue 10 items 1-4): pure state machine.
// (It runs past 450 lines because this header states the whole failover rule, detection,
// the order of the promotion's steps, fencing and the guard, beside the code that keeps it.)
//
// While the primary lives, the standby IS a mirror of it: every event goes to an inner Mirror
// (composition, so mirror.ts keeps one job), which keeps the standby in sync. Around it the
// standby tracks when it last heard the primary (any frame of the current epoch on that link).
//
// Detection (claim 13 v). The primary is declared lost only when BOTH hold:
//   1. the standby heard nothing from it for `failoverTimeoutMs`, and
//   2. a strict majority of the cluster's sites (primary, standby, every mirror, the optional
//      witness) say they cannot reach it: the standby counts itself, then asks every other
//      reachable site `lastHeardQuery` and counts each `lastHeardAnswer` whose `heardAgoMs` is
//      -1 (never) or >= failoverTimeoutMs. The primary itself never votes, so with primary +
//      standby + 2 mirrors all three non-primaries must agree (3 of 4).
// A cut link between the standby and the primary alone therefore never promotes: the mirrors
// still hear the primary's heartbeats and answer with small ages. The query is repeated every
// `queryIntervalMs` while condition 1 holds (answers of an older query are ignored).
//
// Promotion (claim 13 vi, vii), in this order:
//   c. Catch-up debt first (issue 16 item 4): every other site (the mirrors AND the old primary)
//      is owed the regions where it may differ from the standby's image, recorded as bitmaps,
//      durable: the writes above the committed watermark that the standby still holds in its
//      journal (the divergent tail: a mirror holding less gets them, one holding more, old-epoch
//      writes never acked to the host, is overwritten there), plus the site's dirty bits the
//      old primary had (the standby's durable copy of them, peerDirty). What other sites hold
//      beyond that tail they name themselves when they join. Bitmaps are local bookkeeping:
//      nothing of the new epoch is visible yet.
//   a. metaPersist { epoch: old + 1, acting: primary } before anything of the new epoch
//      happens: a standby that restarts after this point comes back as the primary of the new
//      epoch (with the debt of c already recorded) and can never act for the old epoch again.
//      From the decision on, frames from the old primary are dropped (it is believed lost; the
//      new epoch fences it below).
//   b. The inner mirror finishes what it already received (quiescent: every received write
//      performed, durable and out of the cache). The standby's storage now holds every write of
//      the old epoch it received; this is the agreed last seq (the standby's seqReceived). Every
//      write the old primary acked to the host is in it, because the host ack needs the ack of
//      every in-sync mirror and the standby is one (see "Limits of this rule" below).
//   d. A Primary for the new epoch starts with that bitmap and gets `peerUp` for every link that
//      is up: it announces `epoch` (mirrors persist the new epoch and fence the old one), then
//      resyncs each mirror and serves host writes (claim 13 steps i-iv as the primary).
// A planned switchover (`promote`) runs the same steps without the silence and the vote.
//
// Fencing: mirrors refuse frames of an older epoch with `fence` (mirror.ts); a Primary that sees
// a newer epoch refuses host writes from then on (primary.ts); the new Primary announces its epoch
// on every new link, so a returning old primary learns it at its first reconnect.
//
// Limits of this rule (documented, not hidden): under `onMirrorLoss: degrade` a primary that
// degraded its standby could ack writes the standby never saw, and promoting it would lose them
// (the standby cannot tell: a larger seqReceived at a mirror is also what unacked in-flight writes
// look like). So the primary is configured with `standby:` (PrimaryConfig) and never degrades it
// for being unreachable: host acks wait for it, as under `block`. A storage failure on the standby
// still degrades it (and a standby new to the volume starts with a full initial sync): until the
// primary says `inSync` again the standby may miss acked writes. The promotion guard covers that:
// `inSyncConfirmed` is set by the primary's `inSync`, cleared by a resync region or a failed local
// write, persisted (sticky `inSyncEpoch`: it holds only in the epoch it was granted in, so a
// guard of an earlier epoch never permits a promotion), and a vote that passes while it is clear is refused
// and logged (`failover_refused`); only `promote --force` (a person accepting the loss) overrides
// it. The witness (src/site/witness.ts) is counted and asked like a mirror; it holds no
// data and only says when it last heard the primary.
//
// External arbiter (`arbiter: 'external'`, issue 20 item 3: etcd, src/site/coordinator.ts):
// detection and vote above are not used (the two never mix in one group). The site's
// coordinator session wins the primary's key for epoch + 1 in one etcd transaction and feeds
// `arbiterGranted { epoch, revision }`; the promotion is the same (c, a, b, d), the revision is
// kept in its record. The grant is taken only for exactly the next epoch and only while the
// guard holds (the session campaigns only then; a grant that races a guard change is refused
// and logged like a refused vote). Silence is not needed: a standby that still hears its
// primary promotes when it wins, because the primary's lease lapsed first (it stopped acking
// host writes by then; the timing argument is in src/site/coordinator.ts). The promoted
// primary takes its authority from the arbiter too (PrimaryConfig.externalAuthority).

import { CoreIO, CoreRole, type OpOwner } from './io.js';
import { Mirror, type MirrorStatus } from './mirror.js';
import { Primary, type PrimaryStatus } from './primary.js';
import { badRanges, regionsOfRanges } from './regions.js';
import { assert, peerRangesMax, type Completion, type CoreAction, type CoreConfig, type CoreEvent, type Epoch, type HeartbeatState, type Meta } from './types.js';
import type { MirrorLossPolicy, OpId, PeerId, PeerMsg, Recovered, Seq } from './types.js';

export interface StandbyConfig extends CoreConfig {
  /** The primary of the current epoch (the standby's upstream). */
  readonly primary: PeerId;
  /** The other mirrors of the cluster (not the standby, not the primary). */
  readonly mirrors: readonly PeerId[];
  /** Optional tie-breaker site: answers `lastHeardQuery`, holds no data. */
  readonly witness?: PeerId;
  /** Silence from the primary after which the standby starts asking the others. */
  readonly failoverTimeoutMs: number;
  /** How often the question is repeated while the primary stays silent. */
  readonly queryIntervalMs: number;
  /** Policy of the Primary this site becomes after a promotion. */
  readonly onMirrorLoss: MirrorLossPolicy;
  /** Who decides a failover: the built-in majority vote (default) or an external arbiter (etcd) through `arbiterGranted`. */
  readonly arbiter?: 'vote' | 'external';
}

export type StandbyPhase = 'following' | 'promoting' | 'primary';

/** One promotion of this standby; `revision`: the arbiter's revision it won at (external arbiter). */
export interface Promotion {
  readonly atMs: number;
  readonly fromEpoch: Epoch;
  readonly toEpoch: Epoch;
  readonly seqReceived: Seq;
  readonly reason: string;
  readonly revision?: bigint;
}

export interface StandbyStatus {
  readonly role: 'standby';
  readonly phase: StandbyPhase;
  readonly epoch: Epoch;
  readonly lastHeardPrimaryMs: number | undefined;
  readonly promotions: readonly Promotion[];
  readonly inner: MirrorStatus | PrimaryStatus;
  /** Promotion guard: the primary said this site holds every acked write, and nothing since undid it. */
  readonly inSyncConfirmed: boolean;
}

/** Cold start: the failover timeout is multiplied by this until the primary is heard once (timeoutMs). */
export const neverHeardFactor = 3;
/** A refused failover (guard) is logged at most this often. */
const refusalLogIntervalMs = 10_000;

export class Standby extends CoreRole implements OpOwner {
  private phase: StandbyPhase = 'following';
  private readonly mirror: Mirror;
  private primaryCore: Primary | undefined;
  private meta: Meta = { epoch: 0n, seqReserved: 0n };
  private readonly linksUp = new Set<PeerId>();
  private lastHeardPrimaryMs: number | undefined;
  private startMs = 0;
  private queryIdNext = 1n;
  /** `nextMs`: when to ask again (queryIntervalMs after sending, sooner if an answer says when it would agree). */
  private query: { queryId: bigint; sentMs: number; nextMs: number; agree: Set<PeerId>; disagree: Set<PeerId> } | undefined;
  private promotion: { epoch: Epoch; metaOp: OpId | undefined; bitmapOps: Set<OpId>; seqReceived: Seq; reason: string; metaIssued: boolean; dirty: Map<PeerId, number[]>; revision?: bigint } | undefined;
  private readonly promotions: Promotion[] = [];
  /** Promotion guard (setInSync): the epoch it was granted in (0: not granted); from the meta record at start. */
  private inSyncEpoch: Epoch = 0n;
  private readonly guardOps = new Set<OpId>();
  /**
   * The primary's dirty bits for every other site (peerDirty): what each of them misses, kept
   * durable here so a promotion resyncs them by bitmap, not the whole volume (issue 16 item 4).
   */
  private readonly copies = new Map<PeerId, Set<number>>();
  private readonly copyOps = new Map<OpId, bigint>();
  private refusalLoggedMs = -Infinity;

  constructor(private readonly cfg: StandbyConfig) {
    assert(cfg.primary !== cfg.self && !cfg.mirrors.includes(cfg.self) && !cfg.mirrors.includes(cfg.primary), () => `standby ${cfg.self}: primary ${cfg.primary} and mirrors [${cfg.mirrors.join(', ')}] must be distinct sites other than itself`);
    assert(cfg.failoverTimeoutMs > cfg.limits.heartbeatIntervalMs, () => `failoverTimeoutMs ${cfg.failoverTimeoutMs} must exceed heartbeatIntervalMs ${cfg.limits.heartbeatIntervalMs}, or a live primary looks lost between two heartbeats`);
    assert(cfg.queryIntervalMs > 0, 'queryIntervalMs must be positive');
    // One op id space and one action list for the standby and both of its inner cores.
    super(new CoreIO(cfg.self));
    // A standby's copy is the failover's reference: it keeps the tail above the watermark.
    this.mirror = new Mirror({ self: cfg.self, volumeBytes: cfg.volumeBytes, blockBytes: cfg.blockBytes, limits: cfg.limits, keepTail: true, upstreams: [cfg.primary] }, this.io);
  }

  /** Sites of the cluster, primary included: the majority is counted out of these. */
  private clusterSites(): number {
    return 2 + this.cfg.mirrors.length + (this.cfg.witness === undefined ? 0 : 1);
  }

  protected onEvent(ev: Exclude<CoreEvent, Completion>): void {
    switch (ev.type) {
      case 'start': this.onStart(ev.recovered); break;
      case 'tick': this.onTick(); break;
      case 'peerUp':
        this.linksUp.add(ev.peer);
        this.forward(ev);
        break;
      case 'peerDown':
        this.linksUp.delete(ev.peer);
        this.forward(ev);
        break;
      case 'peerHeard':
        if (this.phase === 'following' && ev.peer === this.cfg.primary && ev.epoch >= this.mirrorEpoch()) this.heardPrimary();
        this.forward(ev);
        break;
      case 'recv': this.onRecv(ev.peer, ev.msg); break;
      case 'storageRecovered': this.forward(ev); break;
      case 'arbiterGranted': this.onGranted(ev.epoch, ev.revision); break;
      case 'authority':
      case 'arbiterEpoch':
        // The arbiter speaks to the primary this site became; a follower has no grant to lose.
        if (this.primaryCore !== undefined) this.forward(ev);
        break;
      case 'hostWrite':
      case 'hostFlush':
      case 'hostRead':
        if (this.phase === 'promoting') {
          this.io.push({ type: 'ackHost', id: ev.id, error: { kind: 'busy', message: `${this.cfg.self} is being promoted to primary of epoch ${this.promotion!.epoch}; retry shortly` } });
        } else {
          this.forward(ev);
        }
        break;
    }
  }

  private onStart(rec: Recovered): void {
    this.meta = rec.meta;
    this.inSyncEpoch = rec.meta.inSyncEpoch ?? 0n;
    for (const [peer, regions] of rec.dirtyRegions) this.copies.set(peer, new Set(regions));
    this.startMs = this.io.nowMs;
    this.mirror.handle({ type: 'start', recovered: rec });
    this.mirror.afterStep();
    this.log('info', 'standby_start', { epoch: rec.meta.epoch, primary: this.cfg.primary, failoverTimeoutMs: this.cfg.failoverTimeoutMs });
  }

  /** An event for the core currently in charge (the mirror until promotion, then the primary), as one whole step of it. */
  private forward(ev: CoreEvent): void {
    if (this.primaryCore !== undefined) this.primaryCore.handle(ev);
    else this.mirror.handle(ev);
    this.afterInner();
  }

  private afterInner(): void {
    if (this.primaryCore !== undefined) this.primaryCore.afterStep();
    else this.mirror.afterStep();
  }

  /** The step's epilogue: the guard watches what the mirror told its primary; the promotion moves on. */
  afterStep(): void {
    // After a completion too: it went to whichever core (or this standby) issued the op (the
    // mirror's last ops may complete after the promotion: it still owns them).
    this.afterInner();
    if (this.phase === 'following') this.watchGuard();
    this.progressPromotion();
  }

  /**
   * The guard watches what the following mirror tells its primary: a failed write, flush or
   * resync region means the primary will degrade this site and may ack writes without it.
   */
  private watchGuard(): void {
    for (const a of this.io.pending()) {
      if (a.type !== 'send') continue;
      const m = a.msg;
      const failed = m.type === 'writeStatus' ? m.sense : m.type === 'flushAck' || m.type === 'resyncAck' ? m.sense : undefined;
      if (failed !== undefined) this.setInSync(false, `a ${m.type === 'writeStatus' ? 'write' : m.type === 'flushAck' ? 'flush' : 'resync region'} failed on this site's storage: ${failed.message}`);
    }
  }

  private mirrorEpoch(): Epoch {
    return this.mirror.status().epoch;
  }

  private heardPrimary(): void {
    this.lastHeardPrimaryMs = this.io.nowMs;
    if (this.query !== undefined) {
      this.log('info', 'primary_heard_again', { queryId: this.query.queryId });
      this.query = undefined;
    }
  }

  private onRecv(peer: PeerId, msg: PeerMsg): void {
    if (msg.type === 'lastHeardQuery') {
      // After the promotion this site IS the primary: it answers "heard just now".
      const heardAgoMs = this.phase !== 'following' ? 0 : this.lastHeardPrimaryMs === undefined ? -1 : this.io.nowMs - this.lastHeardPrimaryMs;
      this.send(peer, { type: 'lastHeardAnswer', epoch: this.currentEpoch(), queryId: msg.queryId, heardAgoMs, seqReceived: this.mirror.status().seqReceived });
      return;
    }
    if (msg.type === 'lastHeardAnswer') {
      this.onAnswer(peer, msg);
      return;
    }
    if (this.phase === 'promoting' && peer === this.cfg.primary) {
      this.log('warn', 'old_primary_frame_dropped', { peer, type: msg.type, epoch: msg.epoch, promotingTo: this.promotion!.epoch });
      return;
    }
    if (this.phase === 'following' && peer === this.cfg.primary && msg.epoch >= this.mirrorEpoch()) this.heardPrimary();
    if ((msg.type === 'peerDirty' || msg.type === 'peerClean') && this.phase === 'following') {
      if (peer === this.cfg.primary && msg.epoch === this.mirrorEpoch()) this.onCopy(msg);
      else this.log('warn', 'unexpected_sender', { peer, type: msg.type, epoch: msg.epoch, fix: 'only the primary of this epoch sends its dirty bits to its standby' });
      return;
    }
    this.forward({ type: 'recv', peer, msg });
    // The promotion guard, after the mirror took the message (an inSync follows the writes it
    // covers on the same link). Only frames the mirror accepted from its upstream count.
    if (this.phase === 'following' && peer === this.cfg.primary && this.mirror.status().upstream === peer && msg.epoch === this.mirrorEpoch()) {
      if (msg.type === 'inSync') {
        // A write that failed here and is not yet repaired by a resync outranks the primary's
        // word: the primary may have sent this before it read the failure (a link reset
        // delays the writeStatus until after the join), and will degrade this site on reading it.
        const failed = this.mirror.status().failedWrites;
        if (failed > 0) this.log('warn', 'in_sync_ignored', { peer, failedWrites: failed, why: 'writes failed on this site and await a resync' });
        else this.setInSync(true, `${peer} says this site holds every write it acked (seq ${msg.seq})`);
      }
      else if (msg.type === 'resyncData') this.setInSync(false, `${peer} is resyncing this site`);
    }
  }

  /** The primary's dirty bits for another site: kept durable here (bitmapSet), then confirmed (peerDirtyAck). */
  private onCopy(msg: Extract<PeerMsg, { type: 'peerDirty' | 'peerClean' }>): void {
    // The peer names a bitmap (a file beside the cache): only the cluster's own mirrors.
    const bad = !this.cfg.mirrors.includes(msg.peer) ? `${msg.peer} is not one of this cluster's mirrors (${this.cfg.mirrors.join(', ')})` : badRanges(msg.ranges, this.cfg.volumeBytes, peerRangesMax);
    if (bad !== undefined) {
      this.io.refuse(this.cfg.primary, 'bad_frame', `${msg.type} for ${msg.peer}: ${bad}`);
      return;
    }
    const regions = regionsOfRanges(msg.ranges, this.cfg.limits.regionBytes);
    let set = this.copies.get(msg.peer);
    if (set === undefined) this.copies.set(msg.peer, (set = new Set()));
    if (msg.type === 'peerClean') {
      for (const r of regions) set.delete(r);
      this.io.push({ type: 'bitmapClear', peer: msg.peer, regions });
      return;
    }
    for (const r of regions) set.add(r);
    const opId = this.io.op(this);
    this.copyOps.set(opId, msg.id);
    this.io.push({ type: 'bitmapSet', opId, peer: msg.peer, regions });
  }

  /**
   * Promotion guard: whether this standby is known to hold every write its primary acked. Set by
   * the primary's `inSync`, cleared by a resync region or a failed local write; persisted
   * (sticky `standbyInSync` in the meta record) so a restart keeps it. Not cleared by a mere
   * link reset: the primary never degrades its standby for being unreachable.
   */
  private setInSync(v: boolean, why: string): void {
    if (this.inSyncConfirmed === v) return;
    this.inSyncEpoch = v ? this.mirrorEpoch() : 0n;
    const opId = this.io.op(this);
    this.guardOps.add(opId);
    // The inner mirror's epoch is settled here: inSync, resync data and write failures all come
    // after its join, which comes after it persisted the epoch it adopted.
    this.io.push({ type: 'metaPersist', opId, meta: { epoch: this.mirrorEpoch(), seqReserved: this.meta.seqReserved, inSyncEpoch: this.inSyncEpoch } });
    this.log(v ? 'info' : 'warn', v ? 'standby_in_sync' : 'standby_out_of_sync', { why, promotable: v });
  }

  /** The guard holds: granted in the epoch this site is at now (an epoch change voids it). */
  private get inSyncConfirmed(): boolean {
    return this.inSyncEpoch !== 0n && this.inSyncEpoch === this.mirrorEpoch();
  }

  /** Why this standby may not be promoted now (undefined: it may). */
  notPromotable(): string | undefined {
    if (this.phase !== 'following') return `${this.cfg.self} is ${this.phase === 'primary' ? 'the primary already' : 'being promoted'}`;
    if (!this.inSyncConfirmed) {
      const stale = this.inSyncEpoch !== 0n ? ` (it was in sync in epoch ${this.inSyncEpoch}, the cluster is at ${this.mirrorEpoch()} now)` : '';
      return `${this.cfg.self} is not known to hold every write ${this.cfg.primary} acked in epoch ${this.mirrorEpoch()}${stale} (its primary has not said in sync since it was resynced, a write failed here, or it never joined); promoting it could lose acknowledged writes`;
    }
    return undefined;
  }

  private currentEpoch(): Epoch {
    if (this.primaryCore !== undefined) return this.primaryCore.status().epoch;
    return this.mirror.status().epoch;
  }

  /**
   * The silence that starts a vote. A standby that has not heard its primary once in this life
   * (the whole cluster is starting, in any order) waits `neverHeardFactor` times longer, so a
   * primary that is merely slow to boot is not replaced at cold start; a primary that is really
   * gone is still replaced, later.
   */
  private timeoutMs(): number {
    return this.lastHeardPrimaryMs === undefined ? this.cfg.failoverTimeoutMs * neverHeardFactor : this.cfg.failoverTimeoutMs;
  }

  private silentMs(): number {
    // A standby that never heard its primary in this life counts from its start.
    return this.io.nowMs - (this.lastHeardPrimaryMs ?? this.startMs);
  }

  private onTick(): void {
    this.forward({ type: 'tick' });
    if (this.phase !== 'following' || this.cfg.arbiter === 'external') return;
    if (this.silentMs() < this.timeoutMs()) return;
    if (this.query !== undefined && this.io.nowMs < this.query.nextMs) return;
    const queryId = this.queryIdNext++;
    this.query = { queryId, sentMs: this.io.nowMs, nextMs: this.io.nowMs + this.cfg.queryIntervalMs, agree: new Set(), disagree: new Set() };
    const voters = [...this.cfg.mirrors, ...(this.cfg.witness === undefined ? [] : [this.cfg.witness])];
    const asked = voters.filter((p) => this.linksUp.has(p));
    for (const p of asked) this.send(p, { type: 'lastHeardQuery', epoch: this.mirror.status().epoch, queryId });
    this.log('warn', 'primary_silent', { primary: this.cfg.primary, silentMs: Math.round(this.silentMs()), failoverTimeoutMs: this.timeoutMs(), queryId, asked, ...(this.lastHeardPrimaryMs === undefined ? { neverHeard: true } : {}) });
    this.maybePromote(); // a cluster of primary + standby alone can never reach a majority: logged there
  }

  private onAnswer(peer: PeerId, msg: Extract<PeerMsg, { type: 'lastHeardAnswer' }>): void {
    const q = this.query;
    if (this.phase !== 'following' || q === undefined || msg.queryId !== q.queryId) return; // stale answer
    const agrees = msg.heardAgoMs < 0 || msg.heardAgoMs >= this.cfg.failoverTimeoutMs;
    const own = this.mirror.status();
    if (msg.epoch > own.epoch) {
      // The answering site already follows a newer epoch: someone else was promoted.
      this.log('warn', 'newer_epoch_seen', { peer, epoch: msg.epoch, ours: own.epoch, effect: 'no promotion' });
      q.disagree.add(peer);
      return;
    }
    (agrees ? q.agree : q.disagree).add(peer);
    if (!agrees) {
      // It heard the primary `heardAgoMs` ago: if the primary is gone, that site agrees once its
      // silence reaches the timeout too. Ask again then (plus one tick), not a full interval later.
      const agreeAtMs = this.io.nowMs + (this.cfg.failoverTimeoutMs - msg.heardAgoMs) + this.cfg.limits.tickMs;
      q.nextMs = Math.max(this.io.nowMs + this.cfg.limits.tickMs, Math.min(q.nextMs, agreeAtMs));
    }
    this.log('info', 'last_heard_answer', { peer, heardAgoMs: msg.heardAgoMs, seqReceived: msg.seqReceived, agrees, queryId: q.queryId });
    this.maybePromote();
  }

  private maybePromote(): void {
    const q = this.query;
    if (q === undefined || this.phase !== 'following') return;
    const votes = 1 + q.agree.size; // the standby itself
    if (votes * 2 <= this.clusterSites()) return;
    this.query = undefined;
    const refusal = this.notPromotable();
    if (refusal !== undefined) {
      // The vote says the primary is gone, but this site may miss acked writes: stay a follower
      // and say so loudly (a person decides: bring the primary back, or promote --force).
      if (this.io.nowMs - this.refusalLoggedMs >= refusalLogIntervalMs) {
        this.refusalLoggedMs = this.io.nowMs;
        this.log('error', 'failover_refused', { primary: this.cfg.primary, votes, sites: this.clusterSites(), why: refusal, fix: `restart ${this.cfg.primary}, or accept the loss with geomirror promote --site ${this.cfg.self} --force` });
      }
      return;
    }
    this.beginPromotion(`no frame from ${this.cfg.primary} for ${Math.round(this.silentMs())} ms (timeout ${this.timeoutMs()} ms${this.lastHeardPrimaryMs === undefined ? ', never heard in this life' : ''}); ${votes} of ${this.clusterSites()} sites cannot reach it (${[this.cfg.self, ...q.agree].join(', ')})`);
  }

  /**
   * The external arbiter made this standby the primary of `epoch` (won at `revision`): promote,
   * whether or not the primary is still heard (its lease lapsed first: src/site/coordinator.ts).
   * Only exactly the next epoch, and only while the guard holds.
   */
  private onGranted(epoch: Epoch, revision: bigint): void {
    if (this.phase !== 'following' || this.cfg.arbiter !== 'external') {
      this.log('warn', 'arbiter_grant_ignored', { epoch, revision, why: this.phase !== 'following' ? `this site is ${this.phase} already` : 'this standby decides by the built-in vote' });
      return;
    }
    const own = this.mirrorEpoch();
    if (epoch !== own + 1n) {
      this.log('error', 'arbiter_grant_refused', { epoch, revision, ours: own, why: `an epoch grows by exactly one per promotion; this site is at ${own}` });
      return;
    }
    const refusal = this.notPromotable();
    if (refusal !== undefined) {
      this.log('error', 'failover_refused', { primary: this.cfg.primary, epoch, revision, why: refusal, fix: `restart ${this.cfg.primary}, or accept the loss with geomirror promote --site ${this.cfg.self} --force` });
      return;
    }
    this.query = undefined;
    this.beginPromotion(`won the coordinator's primary key for epoch ${epoch} at etcd revision ${revision} (the lease of ${this.cfg.primary} had expired or was revoked)`, revision);
  }

  /**
   * Planned switchover (`geomirror promote`, issue 10 item 5): promote now, without waiting for
   * silence or a vote. The same steps as a failover follow, so the same guarantees hold: the old
   * primary's acked writes are all here (it never acks without its standby), and the new epoch
   * fences it. With an external arbiter the site wins the arbiter's key first and passes the
   * `revision` it won at.
   */
  promote(reason: string, nowMs: number, force = false, revision?: bigint): CoreAction[] {
    this.io.begin(nowMs);
    if (this.phase === 'following') {
      if (!this.inSyncConfirmed) {
        assert(force, () => `standby ${this.cfg.self}: promote() without force while ${this.notPromotable()}`);
        this.log('error', 'forced_promotion', { reason, risk: this.notPromotable() });
      }
      this.query = undefined;
      this.beginPromotion(reason, revision);
    }
    this.afterStep();
    return this.io.take();
  }

  private beginPromotion(reason: string, revision?: bigint): void {
    const own = this.mirror.status();
    const toEpoch = own.epoch + 1n;
    this.phase = 'promoting';
    // (c first) What every other site owes, durable before the epoch, so that once the epoch says
    // "acting primary" a restart finds the debt already recorded (issue 16 item 4: failover keeps
    // redundancy). A site in sync with the old primary held every write up to what everyone
    // acked (the committed watermark); only the writes above it, which this site still holds in
    // its journal (the divergent tail), may differ there: their regions are owed. A site the old
    // primary had degraded owes its dirty bits too (this standby's copy of them). What the other
    // sites hold beyond this tail they name themselves when they join. Bitmaps are local
    // bookkeeping; nothing of the new epoch is visible yet.
    const tail = this.mirror.heldRegions();
    const dirty = new Map<PeerId, number[]>();
    for (const peer of this.downstreams()) dirty.set(peer, [...new Set([...tail, ...(this.copies.get(peer) ?? [])])].sort((a, b) => a - b));
    this.promotion = { epoch: toEpoch, metaOp: undefined, bitmapOps: new Set(), seqReceived: own.seqReceived, reason, metaIssued: false, dirty, ...(revision !== undefined ? { revision } : {}) };
    this.log('warn', 'failover_decided', { fromEpoch: own.epoch, toEpoch, seqReceived: own.seqReceived, reason, ...(revision !== undefined ? { revision } : {}), tailRegions: tail.length, owed: Object.fromEntries([...dirty].map(([p, r]) => [p, r.length])) });
    for (const [peer, regions] of dirty) {
      const opId = this.io.op(this);
      this.promotion.bitmapOps.add(opId);
      this.io.push({ type: 'bitmapSet', opId, peer, regions });
    }
  }

  /** The standby's own ops: guard saves, and the promotion's bitmaps and epoch. */
  onDone(ev: Completion): void {
    const { opId, type } = ev;
    const copyId = this.copyOps.get(opId);
    if (copyId !== undefined) {
      this.copyOps.delete(opId);
      if (this.phase === 'following') this.send(this.cfg.primary, { type: 'peerDirtyAck', epoch: this.mirrorEpoch(), id: copyId });
      return;
    }
    if (this.guardOps.delete(opId)) {
      assert(type === 'metaPersisted', () => `op ${opId} is a metaPersist, completed as ${type}`);
      return;
    }
    const p = this.promotion;
    assert(p !== undefined, () => `standby ${this.cfg.self}: ${type} for op ${opId} with no promotion under way`);
    if (opId === p.metaOp) {
      assert(type === 'metaPersisted', () => `op ${opId} is a metaPersist, completed as ${type}`);
      p.metaOp = undefined;
      this.meta = { epoch: p.epoch, seqReserved: 1n, acting: 'primary' };
      this.log('info', 'epoch_persisted', { epoch: p.epoch });
      return;
    }
    assert(type === 'bitmapPersisted' && p.bitmapOps.delete(opId), () => `standby ${this.cfg.self}: unexpected ${type} for op ${opId}`);
  }

  private progressPromotion(): void {
    const p = this.promotion;
    if (this.phase !== 'promoting' || p === undefined || p.bitmapOps.size > 0) return;
    if (!p.metaIssued) {
      // (a) The new epoch is durable before anything of it happens. `acting: primary` makes a
      // restart of this site come back as the primary of that epoch, whatever its config says.
      p.metaIssued = true;
      p.metaOp = this.io.op(this);
      this.io.push({ type: 'metaPersist', opId: p.metaOp, meta: { epoch: p.epoch, seqReserved: 1n, acting: 'primary' } });
      return;
    }
    if (p.metaOp !== undefined) return;
    // (b) Everything the mirror received is performed and durable (or failed for good, which
    // only a forced promotion gets here with).
    if (!this.mirror.settled()) return;
    this.mirror.releaseSettled();
    // (d) Act as the primary of the new epoch.
    const dirty = p.dirty;
    // The old primary is this primary's standby once it is back and whole (failback, issue 16
    // item 5); until then it must not hold host writes up.
    // With an external arbiter the new primary holds its grant already (the key this site won)
    // and loses it with the lease; a planned `promote` there is granted the same way by the site.
    const ext = this.cfg.arbiter === 'external' ? { externalAuthority: { held: true } } : {};
    const primary = new Primary({ self: this.cfg.self, volumeBytes: this.cfg.volumeBytes, blockBytes: this.cfg.blockBytes, mirrors: this.downstreams(), onMirrorLoss: this.cfg.onMirrorLoss, limits: this.cfg.limits, failover: true, standby: this.cfg.primary, standbyArm: 'inSync', ...ext }, this.io);
    this.primaryCore = primary;
    this.phase = 'primary';
    const rev = p.revision !== undefined ? { revision: p.revision } : {};
    this.promotions.push({ atMs: this.io.nowMs, fromEpoch: p.epoch - 1n, toEpoch: p.epoch, seqReceived: p.seqReceived, reason: p.reason, ...rev });
    this.log('warn', 'promoted', { epoch: p.epoch, seqReceived: p.seqReceived, mirrors: this.downstreams(), reason: p.reason, ...rev });
    primary.handle({ type: 'start', recovered: { meta: this.meta, cacheEntries: [], dirtyRegions: dirty } });
    for (const peer of this.downstreams()) {
      if (this.linksUp.has(peer)) primary.handle({ type: 'peerUp', peer });
    }
    primary.afterStep();
  }

  /** The new primary's mirrors: every data site but this one (the old primary included). */
  downstreams(): PeerId[] {
    return [this.cfg.primary, ...this.cfg.mirrors];
  }

  private send(peer: PeerId, msg: PeerMsg): void {
    this.io.send(peer, msg);
  }

  private log(level: 'debug' | 'info' | 'warn' | 'error', event: string, fields: Record<string, unknown>): void {
    this.io.log(level, event, fields);
  }

  heartbeat(): HeartbeatState {
    return this.primaryCore?.heartbeat() ?? this.mirror.heartbeat();
  }

  /** Whether the host may read this range from local storage (a promoted standby's own copy may not be whole). */
  readable(offsetBytes: number, lengthBytes: number): boolean {
    return this.primaryCore?.readable(offsetBytes, lengthBytes) ?? true;
  }

  /** Host writes the site may submit now (0 unless this site is the primary). */
  hostQueueFree(): number {
    return this.primaryCore?.hostQueueFree() ?? 0;
  }

  quiescent(): boolean {
    return this.primaryCore !== undefined ? this.primaryCore.quiescent() : this.phase === 'following' && this.mirror.quiescent();
  }

  /** Where the standby is (cheap: the site checks it after every step). */
  phaseNow(): StandbyPhase {
    return this.phase;
  }

  /** The newer epoch that fenced the primary this site became, if one did. */
  fencedBy(): Epoch | undefined {
    return this.primaryCore?.fencedBy();
  }

  /** While following: the primary, once it announced its epoch on the link (the inner mirror's upstream). */
  followedUpstream(): PeerId | undefined {
    return this.phase === 'following' ? this.mirror.status().upstream : undefined;
  }

  inSyncMirrors(): PeerId[] {
    return this.primaryCore?.inSyncMirrors() ?? [];
  }

  status(): StandbyStatus {
    return {
      role: 'standby', phase: this.phase, epoch: this.currentEpoch(), lastHeardPrimaryMs: this.lastHeardPrimaryMs,
      promotions: [...this.promotions], inner: this.primaryCore?.status() ?? this.mirror.status(), inSyncConfirmed: this.inSyncConfirmed,
    };
  }
}
