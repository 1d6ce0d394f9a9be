// keepPollerInterests: serialport's native poller must keep waiting for "writable" while a read
// re-polls for "readable" (bindings-cpp Poller::poll starts uv_poll with only the newest event).

import { EventEmitter } from 'node:events';
import { describe, expect, it } from 'vitest';
import { keepPollerInterests } from '../../hal/serial/device.js';

class FakePoller extends EventEmitter {
  readonly started: number[] = [];
  poll(flags = 0): void {
    this.started.push(flags); // what uv_poll_start would be given
  }
  override once(event: string, cb: (...a: unknown[]) => void): this {
    this.poll(event === 'readable' ? 1 : 2);
    return super.once(event, cb);
  }
}

describe('keepPollerInterests', () => {
  it('re-polls with every event still awaited', () => {
    const poller = new FakePoller();
    keepPollerInterests({ port: { poller } });
    poller.once('writable', () => {}); // a write hit EAGAIN
    poller.once('readable', () => {}); // then a read hit EAGAIN
    expect(poller.started).toEqual([2, 3]); // without the fix: [2, 1], and the write hangs
    poller.emit('writable');
    poller.poll(1);
    expect(poller.started.at(-1)).toBe(1);
  });

  it('ignores ports without a native poller (mock bindings)', () => {
    expect(() => keepPollerInterests({ port: {} })).not.toThrow();
    expect(() => keepPollerInterests({})).not.toThrow();
  });
});
