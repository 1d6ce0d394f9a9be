// A pooled slot backs at most one write: the pool's largest class is no larger than the largest
// piece a host write is cut into (src/site/host-api.ts), so no two entries share a slot and the
// first to leave the journal cannot hand the other's bytes to a new write (hal/payload-pool.ts).
import { describe, expect, it } from 'vitest';
import { hostWritePooledBytesMax } from '../../hal/payload-pool.js';
import { hostWriteChunkBytesMax } from '../../src/site/host-api.js';

describe('payload pool bound (issue 18)', () => {
  it('the largest pooled host write is one piece', () => {
    expect(hostWritePooledBytesMax).toBeLessThanOrEqual(hostWriteChunkBytesMax);
  });

});
