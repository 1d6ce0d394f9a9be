// src/site/host-api.ts writeNow (issue 18): the callback form of a host write completes exactly
// once, never inside the executor's turn (so NBD reply code cannot re-enter the core or stop
// the site by throwing there), with the same refusals and waiting as the promise form.
import { describe, expect, it, vi } from 'vitest';
import type { CoreEvent } from '../../src/core/types.js';
import { HostApi, HostIoError, type HostApiSite } from '../../src/site/host-api.js';

function fakeSite(over: Partial<HostApiSite> = {}): HostApiSite & { fed: CoreEvent[]; wroteBytes: number } {
  const s = {
    fed: [] as CoreEvent[],
    wroteBytes: 0,
    name: 'local',
    feed(ev: CoreEvent) {
      s.fed.push(ev);
    },
    readable: () => true,
    hostRoom: () => 16 as number | undefined,
    acting: () => 'primary',
    down: () => undefined as string | undefined,
    readBlocks: async (_o: number, n: number) => Buffer.alloc(n),
    nowMs: () => 0,
    acked: () => undefined,
    wrote(n: number) {
      s.wroteBytes += n;
    },
    flushed: () => undefined,
    ...over,
  };
  return s;
}

const tick = (): Promise<void> => new Promise((res) => setImmediate(res));

describe('HostApi.writeNow (issue 18)', () => {
  it('completes once, after the ack and outside it, and counts the bytes', async () => {
    const site = fakeSite();
    const api = new HostApi(site);
    const calls: (Error | undefined)[] = [];
    api.writeNow(4096, Buffer.alloc(4096), false, (err) => calls.push(err));
    expect(site.fed).toHaveLength(1);
    const ev = site.fed[0] as Extract<CoreEvent, { type: 'hostWrite' }>;
    expect(ev).toMatchObject({ type: 'hostWrite', offsetBytes: 4096, lengthBytes: 4096, fua: false });
    api.ack(ev.id, undefined);
    expect(calls).toEqual([]); // not inside the executor's turn
    await Promise.resolve();
    expect(calls).toEqual([undefined]);
    expect(site.wroteBytes).toBe(4096);
    api.ack(ev.id, undefined); // a second ack for the id is ignored
    await tick();
    expect(calls).toHaveLength(1);
  });

  it('reports the core error, a fenced site and a stopped site asynchronously, each once', async () => {
    const site = fakeSite();
    const api = new HostApi(site);
    const errs: (Error | undefined)[] = [];
    api.writeNow(0, Buffer.alloc(512), true, (err) => errs.push(err));
    api.ack((site.fed[0] as { id: number }).id, { kind: 'io', message: 'medium error', sense: { key: 3, asc: 0x11, ascq: 0, message: 'unrecovered read error' } });
    const fenced = new HostApi(fakeSite({ hostRoom: () => undefined, acting: () => 'mirror' }));
    let sync = true;
    fenced.writeNow(0, Buffer.alloc(512), false, (err) => {
      expect(sync).toBe(false);
      errs.push(err);
    });
    const down = new HostApi(fakeSite({ down: () => 'site stopping' }));
    down.writeNow(0, Buffer.alloc(512), false, (err) => {
      expect(sync).toBe(false);
      errs.push(err);
    });
    sync = false;
    await tick();
    expect(errs.map((e) => (e as HostIoError).kind)).toEqual(['io', 'fenced', 'io']);
    expect(errs.map((e) => e?.message)).toEqual(['medium error', expect.stringMatching(/runs as a mirror/), 'site stopping']);
  });

  it('a write refused as busy waits parked, goes in on unpark, and failAll fails what is left', async () => {
    let room = 1;
    const site = fakeSite({ hostRoom: () => room });
    const api = new HostApi(site);
    const done: (string | undefined)[] = [];
    api.writeNow(0, Buffer.alloc(512), false, (err) => done.push(err === undefined ? 'ok' : (err as HostIoError).kind));
    api.ack((site.fed[0] as { id: number }).id, { kind: 'busy', message: 'promoting' });
    room = 0;
    api.writeNow(512, Buffer.alloc(512), false, (err) => done.push(err === undefined ? 'ok' : (err as HostIoError).kind));
    expect(site.fed).toHaveLength(1); // both wait now
    room = 1;
    api.unpark(); // both go in, in arrival order: the refused one again, then the second
    expect(site.fed.map((e) => (e as { offsetBytes: number }).offsetBytes)).toEqual([0, 0, 512]);
    api.ack((site.fed[1] as { id: number }).id, undefined);
    api.failAll(new HostIoError('io', 'site stopped'));
    await tick();
    expect(done).toEqual(['ok', 'io']);
  });

  it('every completion of a batch runs even if one throws; the first error is thrown on', () => {
    const scheduled: (() => void)[] = [];
    const spy = vi.spyOn(globalThis, 'queueMicrotask').mockImplementation((fn) => void scheduled.push(fn));
    try {
      const site = fakeSite();
      const api = new HostApi(site);
      const ran: number[] = [];
      api.writeNow(0, Buffer.alloc(512), false, () => {
        ran.push(1);
        throw new Error('reply failed');
      });
      api.writeNow(512, Buffer.alloc(512), false, () => void ran.push(2));
      for (const ev of site.fed) api.ack((ev as { id: number }).id, undefined);
      expect(scheduled).toHaveLength(1); // one microtask for the batch
      expect(() => scheduled[0]!()).toThrow('reply failed');
      expect(ran).toEqual([1, 2]);
    } finally {
      spy.mockRestore();
    }
  });
});
