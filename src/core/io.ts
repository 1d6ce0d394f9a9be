// The output side of one role instance: the action list a step returns, the op id space, and
// who owns each I/O op in flight. Every component of a role (its local store, its upstream
// side, its fan-out) writes through the same CoreIO, so one step returns one ordered list, op
// ids never collide (a standby's inner mirror and primary share one space), and a completion
// event finds its owner in one place instead of each role keeping its own op maps.
//
// Pure: no clock of its own (`nowMs` is what the current step was fed), no I/O.
import { assert, type Completion, type CoreAction, type CoreEvent, type HeartbeatState, type LogLevel, type OpId, type PeerId, type PeerMsg, type Role } from './types.js';

/** A component that issues I/O actions and takes their completions. */
export interface OpOwner {
  onDone(ev: Completion): void;
}

export class CoreIO {
  /** Time of the step being run (monotonic ms, from the event's caller). */
  nowMs = 0;
  private out: CoreAction[] = [];
  private opNext: OpId = 1;
  private readonly owners = new Map<OpId, OpOwner>();
  private readonly limited = new Map<string, { lastMs: number; suppressed: number }>();

  constructor(readonly self: PeerId) {}

  /** Starts a step: checks that time never runs backwards. */
  begin(nowMs: number): void {
    assert(nowMs >= this.nowMs, () => `${this.self}: time went backwards: ${nowMs} < ${this.nowMs}`);
    this.nowMs = nowMs;
  }

  /** The actions of the step so far, handed over (the list starts empty again). */
  take(): CoreAction[] {
    const out = this.out;
    this.out = [];
    return out;
  }

  /** The actions of the step so far (a composing role inspects what its inner cores said). */
  pending(): readonly CoreAction[] {
    return this.out;
  }

  /** A fresh op id whose completion goes to `owner`. */
  op(owner: OpOwner): OpId {
    const id = this.opNext++;
    this.owners.set(id, owner);
    return id;
  }

  owns(opId: OpId): boolean {
    return this.owners.has(opId);
  }

  /** Hands a completion to the component that issued the op. */
  complete(ev: Completion): void {
    const owner = this.owners.get(ev.opId);
    assert(owner !== undefined, () => `${this.self}: ${ev.type} for unknown op ${ev.opId}`);
    this.owners.delete(ev.opId);
    owner.onDone(ev);
  }

  push(a: CoreAction): void {
    this.out.push(a);
  }

  send(peer: PeerId, msg: PeerMsg): void {
    this.out.push({ type: 'send', peer, msg });
  }

  /** Refuses a peer's input: logs why (naming the peer) and ends its link. */
  refuse(peer: PeerId, event: string, reason: string): void {
    this.log('warn', event, { peer, reason });
    this.out.push({ type: 'closePeer', peer, reason });
  }

  /** A log line (the site's logger already names the site; the simulator's trace adds it). */
  log(level: LogLevel, event: string, fields: Record<string, unknown>): void {
    this.out.push({ type: 'log', level, event, fields });
  }

  /**
   * A log line that may repeat (a failing device, a peer that keeps refusing): the first one of
   * `key` goes out, then at most one per `intervalMs`, carrying how many were suppressed since.
   */
  logLimited(key: string, intervalMs: number, level: LogLevel, event: string, fields: Record<string, unknown>): void {
    const l = this.limited.get(key);
    if (l !== undefined && this.nowMs - l.lastMs < intervalMs) {
      l.suppressed++;
      return;
    }
    this.log(level, event, l !== undefined && l.suppressed > 0 ? { ...fields, suppressed: l.suppressed, sinceMs: Math.round(this.nowMs - l.lastMs) } : fields);
    this.limited.set(key, { lastMs: this.nowMs, suppressed: 0 });
  }
}

/** How often a repeated failure is logged at most (CoreIO.logLimited). */
export const repeatLogIntervalMs = 10_000;

/** Exponential backoff with a cap: the delay after `failures` consecutive failures. */
export function backoffMs(failures: number, minMs: number, maxMs: number): number {
  return Math.min(maxMs, minMs * 2 ** Math.max(0, Math.min(30, failures - 1)));
}

/**
 * Runs `done` once every op of `ops` completed (at once when there is none); `waiters(op)` is
 * the list of callbacks its owner runs when that op completes.
 */
export function afterOps(ops: ReadonlySet<OpId>, waiters: (op: OpId) => (() => void)[], done: () => void): void {
  if (ops.size === 0) {
    done();
    return;
  }
  let left = ops.size;
  for (const op of ops) waiters(op).push(() => --left === 0 && done());
}

/** Whether `ev` completes an I/O op (it carries the op's id). */
export function isCompletion(ev: CoreEvent): ev is Completion {
  return 'opId' in ev;
}

/**
 * The one step of every role (etcd raft's `Step`): check time and the first event, handle the
 * event, run the role's per-step epilogue (admission, acks, flushes, drops), hand the actions
 * over. A role says only what `handle` and `afterStep` do; a standby drives its inner cores'
 * `handle` and `afterStep` itself, through the CoreIO it shares with them.
 */
export abstract class CoreRole implements Role {
  protected started = false;

  constructor(protected readonly io: CoreIO) {}

  step(ev: CoreEvent, nowMs: number): CoreAction[] {
    this.io.begin(nowMs);
    this.handle(ev);
    this.afterStep();
    return this.io.take();
  }

  /** One event, without the prologue and epilogue. */
  handle(ev: CoreEvent): void {
    assert(this.started || ev.type === 'start', () => `${this.io.self}: event ${ev.type} before start`);
    if (ev.type === 'start') {
      assert(!this.started, () => `${this.io.self} started twice (a restart is a new instance)`);
      this.started = true;
    }
    // A completion goes to whichever component issued the op (CoreIO knows).
    if (isCompletion(ev)) this.io.complete(ev);
    else this.onEvent(ev);
  }

  /** A host write or flush reached a role that takes none: refused, naming where they go. */
  protected refuseHost(id: number, what: string): void {
    this.io.push({ type: 'ackHost', id, error: { kind: 'fenced', message: `${this.io.self} is ${what}; host writes go to the primary` } });
  }

  /** The role's own handling of one event that is not a completion (after the checks every role makes). */
  protected abstract onEvent(ev: Exclude<CoreEvent, Completion>): void;
  /** The per-step epilogue. */
  abstract afterStep(): void;
  abstract heartbeat(): HeartbeatState;
  abstract quiescent(): boolean;
}
