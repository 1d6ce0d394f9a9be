// What the simulators share: a deterministic scheduler, one process life of a simulated site
// (the PRODUCTION executor, src/site/executor.ts, over seeded simulated devices), and a seeded
// network of FIFO links that exchange heartbeats the way src/net/link.ts does. TigerBeetle's
// VOPR swaps the storage and the network, not the replica: here the core AND the executor are
// the code a site runs; only the ports below are simulated.

import type { Prng } from '../../hal/prng.js';
import { Executor, type ExecutorEnv, type ExecutorPorts } from '../../src/site/executor.js';
import type { ByteRange, CoreAction, CoreEvent, HostError, LogLevel, PeerId, PeerMsg, Role, SenseInfo } from '../../src/core/types.js';
import type { SimCache, SimDisk, SimPersist } from './models.js';

// ---------------------------------------------------------------------------------------------
// Scheduler: a binary heap of (timeMs, insertion order) -> closure. Equal times run in
// insertion order, so a run is a pure function of its seed.

export class Scheduler {
  private heap: { t: number; n: number; f: () => void }[] = [];
  private n = 0;
  now = 0;

  at(t: number, f: () => void): void {
    const item = { t: Math.max(t, this.now), n: this.n++, f };
    const h = this.heap;
    h.push(item);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (less(h[p]!, h[i]!)) break;
      [h[p], h[i]] = [h[i]!, h[p]!];
      i = p;
    }
  }

  /** Runs the next item; false when empty. */
  runOne(): boolean {
    const h = this.heap;
    if (h.length === 0) return false;
    const top = h[0]!;
    const last = h.pop()!;
    if (h.length > 0) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && less(h[l]!, h[m]!)) m = l;
        if (r < h.length && less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[m], h[i]] = [h[i]!, h[m]!];
        i = m;
      }
    }
    this.now = top.t;
    top.f();
    return true;
  }
}

function less(a: { t: number; n: number }, b: { t: number; n: number }): boolean {
  return a.t < b.t || (a.t === b.t && a.n < b.n);
}

// ---------------------------------------------------------------------------------------------
// One process life of a site: its core, the production executor, simulated device ports.

export interface SimDevices {
  readonly disk: SimDisk;
  readonly cache: SimCache;
  readonly persist: SimPersist;
}

/** Delay draws of a life's devices (each simulator keeps its own distributions). */
export interface SimDelays {
  cacheMs(): number;
  writeMs(): number;
  readMs(): number;
  flushMs(): number;
  persistMs(): number;
}

/** What the world around a life does with what the executor hands out. */
export interface SimLifeHooks {
  send(peer: PeerId, msg: PeerMsg): void;
  close(peer: PeerId, reason: string): void;
  ack(id: number, error: HostError | undefined, data?: Uint8Array): void;
  log(level: LogLevel, event: string, fields: Record<string, unknown>): void;
  fatal(err: Error): void;
  observe?(a: CoreAction): void;
  /** An injected storage failure for this write (undefined: it lands); `completed` runs when it is reported. */
  writeFault?(offsetBytes: number, payload: Uint8Array): { sense: SenseInfo; completed?: () => void } | undefined;
  /** An injected failure of a storage read or flush (undefined: it works). */
  storageFault?(op: 'read' | 'flush'): SenseInfo | undefined;
  /** The core recorded these stale ranges (storageStaleRecorded): the storage forgets them. */
  staleRecorded?(ranges: readonly ByteRange[]): void;
  /** The journal's head may move (an append or a drop): a damage report is gone after this. */
  journalMoved?(): void;
}

export class SimLife {
  readonly exec: Executor;
  private alive = true;
  /** Storage writes issued and not completed: a crash lands each block of them, or not. */
  readonly pendingWrites = new Map<number, { offsetBytes: number; payload: Uint8Array }>();
  private writeNext = 1;
  cacheDoneAtMs = 0;
  persistDoneAtMs = 0;

  constructor(
    private readonly sched: Scheduler,
    private readonly dev: SimDevices,
    private readonly delays: SimDelays,
    readonly core: Role,
    private readonly hooks: SimLifeHooks,
    /** Tests swap the executor for a deliberately broken one (test/sim/executor-mutation.test.ts). */
    makeExecutor: (core: Role, ports: ExecutorPorts, env: ExecutorEnv) => Executor = (c, p, e) => new Executor(c, p, e),
  ) {
    this.exec = makeExecutor(core, this.ports(), {
      nowMs: () => this.sched.now,
      defer: (fn) => this.later(0, fn),
      log: (level, event, fields) => hooks.log(level, event, fields),
      fatal: (err) => hooks.fatal(err),
      observe: (a) => {
        if (a.type === 'payloadDone') this.released(a.payload);
        hooks.observe?.(a);
      },
    });
  }

  /**
   * Payload buffers this life let go (`payloadDone`; the real site reuses them for later
   * writes, hal/payload-pool.ts). Using one again (journal, storage, a frame) or letting it go
   * twice is a use after release: the sim fails the run there (issue 18).
   */
  private readonly releasedPayloads = new WeakSet<ArrayBufferLike>();

  private released(p: Uint8Array): void {
    if (this.releasedPayloads.has(p.buffer)) throw new Error(`payload of ${p.byteLength} bytes let go twice (payloadDone)`);
    this.releasedPayloads.add(p.buffer);
  }

  private checkLive(p: Uint8Array, use: string): void {
    if (this.releasedPayloads.has(p.buffer)) throw new Error(`${use} of a payload already let go (payloadDone): a reused buffer would carry another write's bytes`);
  }

  get live(): boolean {
    return this.alive;
  }

  /** The process dies: nothing of this life completes any more. */
  end(): void {
    this.alive = false;
    this.exec.kill();
  }

  feed(ev: CoreEvent): void {
    if (this.alive) this.exec.feed(ev);
  }

  /** Runs `fn` at now + `delayMs` if this life is still running then. */
  later(delayMs: number, fn: () => void): void {
    this.sched.at(this.sched.now + delayMs, () => {
      if (this.alive) fn();
    });
  }

  private ports(): ExecutorPorts {
    const { disk, cache, persist } = this.dev;
    const d = this.delays;
    const persistDone = (fn: () => void): void => {
      this.persistDoneAtMs = Math.max(this.persistDoneAtMs, this.sched.now + d.persistMs());
      this.sched.at(this.persistDoneAtMs, () => {
        if (!this.alive) return;
        persist.applyOne();
        fn();
      });
    };
    return {
      journal: {
        append: (entry, done) => {
          this.checkLive(entry.payload, 'journal append');
          this.hooks.journalMoved?.();
          cache.append(entry);
          // Appends complete in issue order (contract 2).
          this.cacheDoneAtMs = Math.max(this.cacheDoneAtMs, this.sched.now + d.cacheMs());
          this.sched.at(this.cacheDoneAtMs, () => {
            if (!this.alive) return;
            cache.completeOne();
            done(undefined);
          });
        },
        drop: (entries) => {
          this.hooks.journalMoved?.();
          cache.drop(entries);
        },
      },
      storage: {
        write: (offsetBytes, payload, fua, done) => {
          this.checkLive(payload, `storage write @${offsetBytes}`);
          const fault = this.hooks.writeFault?.(offsetBytes, payload);
          if (fault !== undefined) {
            this.later(d.writeMs(), () => {
              fault.completed?.();
              done(fault.sense);
            });
            return;
          }
          const id = this.writeNext++;
          this.pendingWrites.set(id, { offsetBytes, payload });
          this.later(d.writeMs(), () => {
            this.pendingWrites.delete(id);
            disk.write(offsetBytes, payload, fua);
            done(undefined);
          });
        },
        read: (offsetBytes, lengthBytes, done) => {
          const fault = this.hooks.storageFault?.('read');
          this.later(d.readMs(), () => (fault !== undefined ? done(fault) : done(undefined, disk.read(offsetBytes, lengthBytes))));
        },
        staleRecorded: (ranges) => this.hooks.staleRecorded?.(ranges),
        flush: (done) => {
          const fault = this.hooks.storageFault?.('flush');
          if (fault !== undefined) {
            this.later(d.flushMs(), () => done(fault));
            return;
          }
          const snap = disk.flushSnapshot();
          this.later(d.flushMs(), () => {
            disk.flushApply(snap);
            done(undefined);
          });
        },
      },
      state: {
        saveMeta: (meta, done) => {
          persist.inflight.push({ kind: 'meta', meta });
          persistDone(() => done(undefined));
        },
        setBits: (peer, regions, done) => {
          persist.inflight.push({ kind: 'set', peer, regions });
          persistDone(() => done(undefined));
        },
        clearBits: (peer, regions) => {
          persist.inflight.push({ kind: 'clear', peer, regions });
          persistDone(() => undefined);
        },
      },
      peers: {
        send: (peer, msg) => {
          // A frame leaves as bytes (src/wire): the receiver gets its own copy of a payload,
          // never the sender's buffer, which the sender may let go and reuse.
          if (msg.type === 'write' || msg.type === 'resyncData') {
            this.checkLive(msg.payload, `${msg.type} to ${peer}`);
            this.hooks.send(peer, { ...msg, payload: msg.payload.slice() });
          } else {
            this.hooks.send(peer, msg);
          }
        },
        close: (peer, reason) => this.hooks.close(peer, reason),
      },
      host: { ack: (id, error, data) => this.hooks.ack(id, error, data) },
    };
  }
}

/** A life's crash: each block of every storage write in flight lands or not (torn writes). */
export function tearPendingWrites(life: SimLife, disk: SimDisk, prng: Prng): void {
  for (const w of life.pendingWrites.values()) {
    for (let i = 0; i < w.payload.byteLength / disk.blockBytes; i++) if (prng.chance(0.5)) disk.writeBlock(w.offsetBytes, w.payload, i);
  }
  life.pendingWrites.clear();
}

// ---------------------------------------------------------------------------------------------
// Heartbeats: what src/net/link.ts does on an established link, as a model. Both ends send one
// every interval; the other end's executor hears it as `peerHeard` with the sender's heartbeat
// state (epoch, last seq) and the round trip measured from the echo of its own last one.

export interface HeartbeatLink {
  /** Changes whenever the link goes down or up: a loop of an older connection stops. */
  readonly conn: number;
  readonly up: boolean;
}

export function startHeartbeats(
  sched: Scheduler,
  link: HeartbeatLink,
  from: () => { life: SimLife | undefined; name: PeerId },
  to: () => { life: SimLife | undefined },
  intervalMs: number,
  deliverAt: () => number,
): void {
  const conn = link.conn;
  const beat = (): void => {
    if (!link.up || link.conn !== conn) return;
    const src = from();
    const sentMs = sched.now;
    if (src.life?.live) {
      const hb = src.life.core.heartbeat();
      const t = deliverAt();
      sched.at(t, () => {
        if (!link.up || link.conn !== conn) return;
        to().life?.feed({ type: 'peerHeard', peer: src.name, epoch: hb.epoch, lastSeq: hb.lastSeq, rttMs: 2 * (sched.now - sentMs) });
      });
    }
    sched.at(sched.now + intervalMs, beat);
  };
  beat();
}
