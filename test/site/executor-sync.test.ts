// The executor over ports that complete before their call returns (issue 18: a page-cache write
// is done when the syscall returns). The core must never be re-entered, every completion must
// still be fed exactly once and in order, and actions run from inside a port callback (run())
// must be executed by the running loop, not a nested one.

import { describe, expect, it } from 'vitest';
import type { CoreAction, CoreEvent, Role } from '../../src/core/types.js';
import { Executor, type ExecutorPorts } from '../../src/site/executor.js';

/** A core that journals each host write, then writes it to storage, then acks the host. */
class PipelineCore implements Role {
  depth = 0;
  depthMax = 0;
  readonly seen: string[] = [];
  step(ev: CoreEvent): CoreAction[] {
    this.depth++;
    this.depthMax = Math.max(this.depthMax, this.depth);
    try {
      if (ev.type === 'hostWrite') {
        this.seen.push(`write ${ev.id}`);
        return [{ type: 'cacheAppend', opId: ev.id, entry: { epoch: 1n, seq: BigInt(ev.id), offsetBytes: ev.offsetBytes, lengthBytes: ev.lengthBytes, fua: false, payload: ev.payload } } as CoreAction];
      }
      if (ev.type === 'cacheAppended') {
        this.seen.push(`cached ${ev.opId}`);
        return [{ type: 'storageWrite', opId: ev.opId, offsetBytes: 0, payload: new Uint8Array(512), fua: false } as CoreAction];
      }
      if (ev.type === 'storageWritten') {
        this.seen.push(`stored ${ev.opId}`);
        return [{ type: 'ackHost', id: Number(ev.opId) } as CoreAction];
      }
      return [];
    } finally {
      this.depth--;
    }
  }
  heartbeat(): never {
    throw new Error('not used');
  }
  quiescent(): boolean {
    return true;
  }
}

function syncPorts(acked: number[]): ExecutorPorts {
  return {
    journal: { append: (_e, done) => done(undefined), drop: () => undefined },
    storage: { write: (_o, _p, _f, done) => done(undefined), read: (_o, _l, done) => done(undefined, new Uint8Array(0)), flush: (done) => done(undefined) },
    state: { saveMeta: (_m, done) => done(undefined), setBits: (_p, _r, done) => done(undefined), clearBits: () => undefined },
    peers: { send: () => undefined, close: () => undefined },
    host: { ack: (id) => acked.push(id) },
  };
}

const env = { nowMs: () => 0, defer: (fn: () => void) => setImmediate(fn), log: () => undefined, fatal: (err: Error) => { throw err; } };

describe('Executor over synchronous ports', () => {
  it('feeds completions that arrive before the port call returns after the current actions, never re-entering the core', () => {
    const core = new PipelineCore();
    const acked: number[] = [];
    let idle = 0;
    const exec = new Executor(core, syncPorts(acked), env);
    exec.onIdle = () => idle++;
    for (let id = 1; id <= 3; id++) exec.feed({ type: 'hostWrite', id, offsetBytes: 0, lengthBytes: 512, fua: false, payload: new Uint8Array(512) } as CoreEvent);
    expect(core.depthMax).toBe(1);
    expect(acked).toEqual([1, 2, 3]);
    expect(core.seen).toEqual(['write 1', 'cached 1', 'stored 1', 'write 2', 'cached 2', 'stored 2', 'write 3', 'cached 3', 'stored 3']);
    expect(idle).toBe(3); // one drain per outside feed
    expect(exec.busy).toBe(false);
  });

  it('runs actions handed to run() from inside a port callback in the running loop', () => {
    const core = new PipelineCore();
    const acked: number[] = [];
    const ports = syncPorts(acked);
    let exec!: Executor;
    let injected = false;
    // The first host ack triggers a planned action list (as a standby's promotion would).
    ports.host.ack = (id) => {
      acked.push(id);
      if (!injected) {
        injected = true;
        exec.run([{ type: 'cacheAppend', opId: 99, entry: { epoch: 1n, seq: 99n, offsetBytes: 0, lengthBytes: 512, fua: false, payload: new Uint8Array(512) } } as CoreAction]);
      }
    };
    exec = new Executor(core, ports, env);
    exec.feed({ type: 'hostWrite', id: 1, offsetBytes: 0, lengthBytes: 512, fua: false, payload: new Uint8Array(512) } as CoreEvent);
    expect(core.depthMax).toBe(1);
    expect(acked).toEqual([1, 99]);
  });

  it('executes a whole action list given to run() before it feeds what the list completed', () => {
    const core = new PipelineCore();
    const acked: number[] = [];
    const ports = syncPorts(acked);
    const append = ports.journal.append;
    ports.journal.append = (e, done) => {
      core.seen.push(`append ${e.seq}`);
      append(e, done);
    };
    const exec = new Executor(core, ports, env);
    const entry = (seq: bigint) => ({ epoch: 1n, seq, offsetBytes: 0, lengthBytes: 512, fua: false, payload: new Uint8Array(512) });
    exec.run([{ type: 'cacheAppend', opId: 7, entry: entry(7n) } as CoreAction, { type: 'cacheAppend', opId: 8, entry: entry(8n) } as CoreAction]);
    expect(core.seen.slice(0, 3)).toEqual(['append 7', 'append 8', 'cached 7']);
    expect(core.depthMax).toBe(1);
    expect(acked).toEqual([7, 8]);
  });
});
