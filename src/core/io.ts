// The output side of one role instance: the action list a step returns, the op id space, and
// who owns each I/O op in flight. Every component of a role (its local store, its upstream
// side, its fan-out) writes through the same CoreIO, so one step returns one ordered list, op
// ids never collide (a standby's inner mirror and primary share one space), and a completion
// event finds its owner in one place instead of each role keeping its own op maps.
//
// Pure: no clock of its own (`nowMs` is what the current step was fed), no I/O.
import { assert, type Completion, type CoreAction, type CoreEvent, type LogLevel, type OpId, type PeerId, type PeerMsg } from './types.js';

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

  constructor(readonly self: PeerId) {}

  /** Starts a step: checks that time never runs backwards. */
  begin(nowMs: number): void {
    assert(nowMs >= this.nowMs, `${this.self}: time went backwards: ${nowMs} < ${this.nowMs}`);
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
    assert(owner !== undefined, `${this.self}: ${ev.type} for unknown op ${ev.opId}`);
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
}

/** Whether `ev` completes an I/O op (it carries the op's id). */
export function isCompletion(ev: CoreEvent): ev is Completion {
  return 'opId' in ev;
}
