// When a role flushes its local storage on its own (no host FLUSH waiting): shared by the
// primary, mirror and relay, which each keep performed-but-unflushed writes in their cache until
// a storage flush makes them durable (claims 12 vi, 21: an entry leaves the cache only then).
import type { Limits } from './types.js';

export function periodicFlushDue(lim: Limits, unflushedWrites: number, cacheBytes: number, nowMs: number, lastFlushMs: number): boolean {
  return (
    unflushedWrites > 0 &&
    (unflushedWrites >= lim.flushAfterWritesMax || nowMs - lastFlushMs >= lim.flushIntervalMs || cacheBytes * 2 >= lim.cacheBytesMax)
  );
}
