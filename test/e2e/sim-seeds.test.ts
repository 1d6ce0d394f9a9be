// Issue 16 acceptance, item 5 ("Simulator stalls"): `npm run sim -- --seed 2472` and `--seed 5292`
// (default topology) stalled for good: the mirror's resync dropped failed entries without
// advancing its ack while the restarted primary re-sent only above what the mirror received, and
// a failed replayed entry pinned the mirror's cache. The simulator fails a run that does not
// converge within its bound of simulated time (liveness), and checks every acked write and every
// replica block by block after it converged (safety). Each seed is also run with the storage
// faults of issue 16 (outages, journal damage, host reads) on top.
import { describe, expect, it } from 'vitest';
import { runSim } from '../sim/sim.js';

const stalledSeeds = [2472, 5292];

describe('issue 16 item 5: the simulator seeds that stalled converge', () => {
  for (const seed of stalledSeeds) {
    it(`seed ${seed} (default topology) converges with every acked write on every replica`, () => {
      const r = runSim({ seed });
      expect(r.failures, `replay: npm run sim -- --seed ${seed}`).toEqual([]);
      expect(r.ok).toBe(true);
      // The run is the one that stalled: mirror storage writes failed in it (the failed entries
      // that pinned the mirror), and it still acked host writes.
      expect(r.stats.writeErrors).toBeGreaterThan(0);
      expect(r.stats.acked).toBeGreaterThan(0);
    });

    it(`seed ${seed} with storage faults (SIM_STORAGE_FAULTS=1) converges too`, () => {
      const r = runSim({ seed, storageFaults: true });
      expect(r.failures, `replay: SIM_STORAGE_FAULTS=1 npm run sim -- --seed ${seed}`).toEqual([]);
      expect(r.ok).toBe(true);
    });
  }
});
