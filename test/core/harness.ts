// Scenario-script helpers for the core state machines (etcd raft's testdata style, in code):
// feed one event, get back the actions as short readable lines, compare with the expected
// script. Logs are left out of the lines (they are checked separately where they matter).

import { Mirror, type MirrorConfig } from '../../src/core/mirror.js';
import { Primary, type PrimaryConfig } from '../../src/core/primary.js';
import { defaultLimits, type SenseInfo, type CacheEntry, type CoreAction, type CoreEvent, type Limits, type PeerMsg, type Role } from '../../src/core/types.js';

export const blockBytes = 512;

export function fmtMsg(m: PeerMsg): string {
  switch (m.type) {
    case 'write': return `write s${m.seq} @${m.offsetBytes}+${m.lengthBytes}${m.fua ? ' fua' : ''}`;
    case 'ack': return `ack s${m.seq}`;
    case 'writeStatus': return `writeStatus s${m.seq} ${m.sense.message}`;
    case 'flush': return `flush #${m.flushId} upto s${m.seq}`;
    case 'flushAck': return `flushAck #${m.flushId}`;
    case 'epoch': return `epoch ${m.epoch}`;
    case 'resyncRequest': return `resyncRequest e${m.epoch} received s${m.seqReceived}${m.ranges !== undefined && m.ranges.length > 0 ? ` ranges ${fmtRanges(m.ranges)}` : ''}`;
    case 'resyncData': return `resyncData #${m.resyncId} @${m.offsetBytes}+${m.payload.byteLength}`;
    case 'resyncAck': return `resyncAck #${m.resyncId}`;
    case 'fence': return `fence e${m.epoch}`;
    case 'inSync': return `inSync e${m.epoch} s${m.seq}`;
    case 'lastHeardQuery': return `lastHeardQuery #${m.queryId} e${m.epoch}`;
    case 'lastHeardAnswer': return `lastHeardAnswer #${m.queryId} e${m.epoch} ago ${m.heardAgoMs} s${m.seqReceived}`;
    case 'peerDirty': return `peerDirty #${m.id} ${m.peer} ${fmtRanges(m.ranges)}`;
    case 'peerDirtyAck': return `peerDirtyAck #${m.id}`;
    case 'peerClean': return `peerClean ${m.peer} ${fmtRanges(m.ranges)}`;
    case 'readRequest': return `readRequest #${m.readId} @${m.offsetBytes}+${m.lengthBytes}`;
    case 'readData': return `readData #${m.readId} ${m.sense === undefined ? `${m.payload.byteLength} bytes` : m.sense.message}`;
    // A message without a hand-written form (a new one): its fields, so adding a message does not touch this file.
    default: return `${(m as { type: string }).type} ${JSON.stringify(m, (k, v: unknown) => (k === 'type' ? undefined : typeof v === 'bigint' ? v.toString() : v))}`;
  }
}

function fmtRanges(r: readonly { offsetBytes: number; lengthBytes: number }[]): string {
  return r.map((x) => `@${x.offsetBytes}+${x.lengthBytes}`).join(',');
}

export function fmt(a: CoreAction): string | undefined {
  switch (a.type) {
    case 'cacheAppend': return `cacheAppend s${a.entry.seq} @${a.entry.offsetBytes}+${a.entry.lengthBytes}`;
    case 'cacheDrop': return `cacheDrop ${a.entries.map((e) => `s${e.seq}`).join(',')}`;
    case 'storageWrite': return `storageWrite @${a.offsetBytes}+${a.payload.byteLength}${a.fua ? ' fua' : ''}`;
    case 'storageRead': return `storageRead @${a.offsetBytes}+${a.lengthBytes}`;
    case 'storageFlush': return 'storageFlush';
    case 'closePeer': return `closePeer ${a.peer}`;
    case 'send': return `send ${a.peer} ${fmtMsg(a.msg)}`;
    case 'ackHost': return a.error === undefined ? `ackHost #${a.id}` : `ackHost #${a.id} ${a.error.kind}`;
    case 'bitmapSet': return `bitmapSet ${a.peer} [${a.regions.join(',')}]`;
    case 'bitmapClear': return `bitmapClear ${a.peer} [${a.regions.join(',')}]`;
    case 'metaPersist': return `metaPersist e${a.meta.epoch} reserved s${a.meta.seqReserved}`;
    case 'log': return undefined;
    case 'payloadDone': return undefined; // recorded in Script.released
  }
}

/**
 * Drives one role. `last` holds the actions of the previous step so the script can complete
 * them by name ("the storageWrite at @0") without knowing op ids.
 */
export class Script<R extends Role> {
  nowMs = 0;
  last: CoreAction[] = [];
  readonly logs: string[] = [];
  /** Payloads the role let go (`payloadDone`, not listed among a step's actions): their lengths, in order. */
  readonly released: number[] = [];
  /** Every I/O action issued and not yet completed, by a readable key. */
  private readonly open: CoreAction[] = [];

  constructor(readonly role: R) {}

  step(ev: CoreEvent, advanceMs = 0): string[] {
    this.nowMs += advanceMs;
    return this.took(this.role.step(ev, this.nowMs));
  }

  /** Records actions a role returned from a call other than step() (say Standby.promote). */
  took(actions: CoreAction[]): string[] {
    this.last = actions;
    for (const a of this.last) {
      if (a.type === 'log') this.logs.push(a.event);
      if (a.type === 'payloadDone') this.released.push(a.payload.byteLength);
      if ('opId' in a) this.open.push(a);
    }
    return this.last.map(fmt).filter((x): x is string => x !== undefined);
  }

  /** Completes the oldest open I/O action whose formatted line starts with `prefix`. */
  done(prefix: string, extra: { data?: Uint8Array; sense?: SenseInfo } = {}): string[] {
    const i = this.open.findIndex((a) => fmt(a)!.startsWith(prefix));
    if (i < 0) throw new Error(`no open action "${prefix}"; open: ${this.open.map((a) => fmt(a)).join(' | ')}`);
    const a = this.open.splice(i, 1)[0]!;
    if (!('opId' in a)) throw new Error('unreachable');
    switch (a.type) {
      case 'cacheAppend': return this.step({ type: 'cacheAppended', opId: a.opId });
      case 'storageWrite': return this.step(extra.sense === undefined ? { type: 'storageWritten', opId: a.opId } : { type: 'storageWritten', opId: a.opId, sense: extra.sense });
      case 'storageRead': return this.step({ type: 'storageRead', opId: a.opId, data: extra.data ?? new Uint8Array(a.lengthBytes) });
      case 'storageFlush': return this.step({ type: 'storageFlushed', opId: a.opId });
      case 'bitmapSet': return this.step({ type: 'bitmapPersisted', opId: a.opId });
      case 'metaPersist': return this.step({ type: 'metaPersisted', opId: a.opId });
    }
  }

  openActions(): string[] {
    return this.open.map((a) => fmt(a)!);
  }

  tick(advanceMs: number): string[] {
    return this.step({ type: 'tick' }, advanceMs);
  }

  recv(peer: string, msg: PeerMsg): string[] {
    return this.step({ type: 'recv', peer, msg });
  }
}

export const testLimits: Limits = {
  ...defaultLimits,
  inflightWritesMax: 4,
  inflightBytesMax: 8 * 1024,
  hostQueueWritesMax: 2,
  cacheBytesMax: 16 * 1024,
  regionBytes: 1024,
  resyncBytesPerSecMax: 1024 * 1000, // one region per ms of ticks
  resyncInflightRegionsMax: 1,
  mirrorLossGraceMs: 100,
  heartbeatIntervalMs: 1_000_000, // out of the way unless a test wants it
  flushIntervalMs: 50,
  flushAfterWritesMax: 100,
  seqReserveChunk: 1000n,
};

export function primaryScript(mirrors: string[], opts: Partial<PrimaryConfig> = {}, cacheEntries: CacheEntry[] = [], dirty = new Map<string, number[]>(), seqReserved = 1n): Script<Primary> {
  const p = new Primary({ self: 'local', volumeBytes: 16 * 1024, blockBytes, mirrors, onMirrorLoss: 'degrade', limits: testLimits, ...opts });
  const s = new Script(p);
  s.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved }, cacheEntries, dirtyRegions: dirty } });
  return s;
}

export function mirrorScript(cacheEntries: CacheEntry[] = [], opts: Partial<MirrorConfig> = {}): Script<Mirror> {
  const m = new Mirror({ self: 'east', volumeBytes: 16 * 1024, blockBytes, limits: testLimits, ...opts });
  const s = new Script(m);
  s.step({ type: 'start', recovered: { meta: { epoch: 1n, seqReserved: 0n }, cacheEntries, dirtyRegions: new Map() } });
  return s;
}

/** A storage write that failed (medium error), as `done(prefix, writeFailed)` completes it. */
export const writeFailed = { sense: { key: 0x3, asc: 0x0c, ascq: 0, message: 'local.img at byte 0: write error (test)' } };

export function hostWrite(id: number, offsetBytes: number, lengthBytes: number, fua = false): CoreEvent {
  return { type: 'hostWrite', id, offsetBytes, lengthBytes, fua, payload: new Uint8Array(lengthBytes).fill(id) };
}

export function writeMsg(seq: bigint, offsetBytes: number, lengthBytes: number, epoch = 1n, fua = false): PeerMsg {
  return { type: 'write', epoch, seq, offsetBytes, lengthBytes, fua, payload: new Uint8Array(lengthBytes).fill(Number(seq)) };
}
