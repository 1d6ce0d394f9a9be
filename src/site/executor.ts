// The executor: the only code that turns a core's actions into I/O (src/core/types.ts, "Contract
// the executor must keep"). A site runs it over real devices and sockets (src/site/ports.ts,
// src/site/peers.ts); the simulator (test/sim) runs this same class over seeded simulated
// devices, links and clock, so what the simulator checks is what production executes.
//
// It feeds one event at a time to the core and carries out the returned actions in order;
// completions come back as events through the same queue, so the core is never re-entered.
// Devices are callback ports (no promise chains on the write path): each I/O action produces
// exactly one completion, in issue order for the journal. A port may complete an action before
// its call returns (a page-cache write is done when the syscall returns, issue 18): that
// completion queues like any other and is fed after the current action list, never inside it.
//
// Cumulative acks coalesce: the newest ack for a peer, sent by the end of this turn (env.defer),
// covers every earlier one (one frame per burst, not one per completed write). Never reordered:
// any other message to that peer first sends the ack it would overtake.
import { payloadPool } from '../../hal/payload-pool.js';
import type { ByteRange, CacheEntry, CoreAction, CoreEvent, Epoch, HostError, LogLevel, Meta, PeerId, PeerMsg, Role, Seq, SenseInfo } from '../core/types.js';

/** The battery-backed cache journal. */
export interface JournalPort {
  /** Appends `entry`; `done` runs once it (and every earlier append) is on the cache device. */
  append(entry: CacheEntry, done: (err: unknown) => void): void;
  /** The entries leave the cache (their appends completed; unknown ones are ignored). */
  drop(entries: readonly { epoch: Epoch; seq: Seq }[]): void;
}

/** The site's own storage (a RAID-1 array of block devices), byte-addressed and whole-block. */
export interface StoragePort {
  write(offsetBytes: number, payload: Uint8Array, fua: boolean, done: (err: unknown) => void): void;
  read(offsetBytes: number, lengthBytes: number, done: (err: unknown, data?: Uint8Array) => void): void;
  flush(done: (err: unknown) => void): void;
  /** The core durably recorded these stale ranges (its storage missed writes there) for repair: the storage may forget them. */
  staleRecorded?(ranges: readonly ByteRange[]): void;
}

/** The small persistent records: the meta record and the per-peer dirty bitmaps. */
export interface StatePort {
  saveMeta(meta: Meta, done: (err: unknown) => void): void;
  setBits(peer: PeerId, regions: readonly number[], done: (err: unknown) => void): void;
  /** Need not be durable: a stale set bit only costs a resync. */
  clearBits(peer: PeerId, regions: readonly number[]): void;
}

/** The replication links. */
export interface PeersPort {
  /** Dropped silently when the link to `peer` is down (contract 4). */
  send(peer: PeerId, msg: PeerMsg): void;
  close(peer: PeerId, reason: string): void;
}

/** Where host operations complete (the NBD export's promises, or a simulated host). */
export interface HostPort {
  /** `data`: a host read the core served (from a mirror: the local copy is not whole there). */
  ack(id: number, error: HostError | undefined, data?: Uint8Array): void;
}

export interface ExecutorPorts {
  readonly journal: JournalPort;
  /** Undefined only for a cache-only relay, whose core issues no storage actions. */
  readonly storage: StoragePort | undefined;
  readonly state: StatePort;
  readonly peers: PeersPort;
  readonly host: HostPort;
}

export interface ExecutorEnv {
  /** Monotonic ms. */
  nowMs(): number;
  /** Runs `fn` after the current turn (production: setImmediate; the simulator: its scheduler). */
  defer(fn: () => void): void;
  log(level: LogLevel, event: string, fields: Record<string, unknown>): void;
  /** The core broke an invariant, or a record it relies on could not be made durable: the site stops. */
  fatal(err: Error): void;
  /** Optional: sees every action once it was handed to its port (metrics, traces, fault plans in tests). */
  observe?(a: CoreAction): void;
}

export function senseInfo(err: unknown): SenseInfo {
  const e = err as { key?: unknown; asc?: unknown; ascq?: unknown; message?: unknown } | undefined;
  if (e !== undefined && e !== null && typeof e.key === 'number' && typeof e.asc === 'number' && typeof e.ascq === 'number') {
    return { key: e.key, asc: e.asc, ascq: e.ascq, message: String(e.message) };
  }
  return { key: 0x4, asc: 0x44, ascq: 0, message: (err as Error)?.message ?? String(err) };
}

type AckMsg = Extract<PeerMsg, { type: 'ack' }>;

export class Executor {
  private readonly queue: CoreEvent[] = [];
  private feeding = false;
  private dead = false;
  private readonly pendingAcks = new Map<PeerId, AckMsg>();
  private acksScheduled = false;
  /** Called after every feed loop drains (the site checks role changes and unparks host ops). */
  onIdle: (() => void) | undefined;

  constructor(
    readonly core: Role,
    private readonly ports: ExecutorPorts,
    private readonly env: ExecutorEnv,
  ) {}

  get stopped(): boolean {
    return this.dead;
  }

  get busy(): boolean {
    return this.feeding;
  }

  /** Feeds one event and executes the actions; events arriving meanwhile queue (no re-entry). */
  feed(ev: CoreEvent): void {
    if (this.dead) return;
    this.queue.push(ev);
    if (this.feeding) return;
    this.drain(undefined);
  }

  /** Executes actions a core returned outside `step` (a standby's planned promotion), then what they completed. */
  run(actions: readonly CoreAction[]): void {
    if (this.dead) return;
    if (!this.feeding) {
      this.drain(actions);
      return;
    }
    // Called from inside a feed (a port callback): the running loop feeds what these complete.
    try {
      for (const a of actions) this.execute(a);
    } catch (err) {
      this.kill(err as Error);
    }
  }

  /** Executes `first` (if any), then feeds queued events until none is left; the core is never re-entered. */
  private drain(first: readonly CoreAction[] | undefined): void {
    this.feeding = true;
    try {
      if (first !== undefined) for (const a of first) this.execute(a);
      // An index, not shift(): completions of synchronous ports append while this runs.
      const q = this.queue;
      let i = 0;
      for (; i < q.length && !this.dead; i++) {
        const actions = this.core.step(q[i]!, this.env.nowMs());
        for (const a of actions) this.execute(a);
      }
      q.length = 0;
    } catch (err) {
      this.kill(err as Error);
    } finally {
      this.feeding = false;
    }
    this.onIdle?.();
  }

  /** Stops for good: completions still in flight are ignored (a new life gets a new executor). */
  kill(err?: Error): void {
    if (this.dead) return;
    this.dead = true;
    this.queue.length = 0;
    if (err !== undefined) this.env.fatal(err);
  }

  /** A completion: fed unless this executor was stopped meanwhile. */
  private done(ev: CoreEvent): void {
    if (!this.dead) this.feed(ev);
  }

  protected execute(a: CoreAction): void {
    this.perform(a);
    this.env.observe?.(a);
  }

  private perform(a: CoreAction): void {
    const p = this.ports;
    switch (a.type) {
      case 'cacheAppend':
        p.journal.append(a.entry, (err) => this.done(err === undefined ? { type: 'cacheAppended', opId: a.opId } : { type: 'cacheAppended', opId: a.opId, sense: senseInfo(err) }));
        break;
      case 'cacheDrop':
        p.journal.drop(a.entries);
        break;
      case 'storageWrite':
        this.storage().write(a.offsetBytes, a.payload, a.fua, (err) => this.done(err === undefined ? { type: 'storageWritten', opId: a.opId } : { type: 'storageWritten', opId: a.opId, sense: senseInfo(err) }));
        break;
      case 'storageRead':
        this.storage().read(a.offsetBytes, a.lengthBytes, (err, data) => this.done(err === undefined ? { type: 'storageRead', opId: a.opId, data: data! } : { type: 'storageRead', opId: a.opId, sense: senseInfo(err) }));
        break;
      case 'storageFlush':
        this.storage().flush((err) => this.done(err === undefined ? { type: 'storageFlushed', opId: a.opId } : { type: 'storageFlushed', opId: a.opId, sense: senseInfo(err) }));
        break;
      case 'send':
        if (a.msg.type === 'ack') {
          this.deferAck(a.peer, a.msg);
          break;
        }
        this.flushAck(a.peer);
        p.peers.send(a.peer, a.msg);
        break;
      case 'closePeer':
        this.pendingAcks.delete(a.peer);
        p.peers.close(a.peer, a.reason);
        break;
      case 'storageStaleRecorded':
        p.storage?.staleRecorded?.(a.ranges);
        break;
      case 'ackHost':
        p.host.ack(a.id, a.error, a.data);
        break;
      case 'bitmapSet':
        p.state.setBits(a.peer, a.regions, (err) => {
          if (err === undefined) this.done({ type: 'bitmapPersisted', opId: a.opId });
          else this.kill(new Error(`dirty bitmap for ${a.peer} could not be persisted: ${(err as Error).message}`));
        });
        break;
      case 'bitmapClear':
        p.state.clearBits(a.peer, a.regions);
        break;
      case 'metaPersist':
        p.state.saveMeta(a.meta, (err) => {
          if (err === undefined) this.done({ type: 'metaPersisted', opId: a.opId });
          else this.kill(new Error(`site meta record could not be persisted: ${(err as Error).message}`));
        });
        break;
      case 'log':
        this.env.log(a.level, a.event, a.fields);
        break;
      case 'payloadDone':
        payloadPool.give(a.payload);
        break;
    }
  }

  private storage(): StoragePort {
    const s = this.ports.storage;
    if (s === undefined) throw new Error('the core issued a storage action on a site without storage (a cache-only relay)');
    return s;
  }

  private deferAck(peer: PeerId, msg: AckMsg): void {
    this.pendingAcks.set(peer, msg);
    if (this.acksScheduled) return;
    this.acksScheduled = true;
    this.env.defer(() => {
      this.acksScheduled = false;
      for (const peer of [...this.pendingAcks.keys()]) this.flushAck(peer);
    });
  }

  private flushAck(peer: PeerId): void {
    const msg = this.pendingAcks.get(peer);
    if (msg === undefined) return;
    this.pendingAcks.delete(peer);
    if (!this.dead) this.ports.peers.send(peer, msg);
  }
}
