// The simulator runs the production executor (src/site/executor.ts), so a bug in the executor is
// a bug the simulator finds. Two mutants of it, each mishandling one action the core depends on:
//   - it answers storageFlush without flushing (a power cut then loses writes a FLUSH covered);
//   - it drops storageFlush (the completion never comes: the site stops making progress).
// The same seeds pass with the real executor and fail with each mutant.
import { describe, expect, it } from 'vitest';
import type { CoreAction } from '../../src/core/types.js';
import { Executor } from '../../src/site/executor.js';
import { runSim, type SimOptions } from './sim.js';

class FlushLiar extends Executor {
  protected override execute(a: CoreAction): void {
    if (a.type === 'storageFlush') this.feed({ type: 'storageFlushed', opId: a.opId }); // "done", nothing flushed
    else super.execute(a);
  }
}

class FlushDropper extends Executor {
  protected override execute(a: CoreAction): void {
    if (a.type !== 'storageFlush') super.execute(a);
  }
}

const liar: SimOptions['makeExecutor'] = (core, ports, env) => new FlushLiar(core, ports, env);
const dropper: SimOptions['makeExecutor'] = (core, ports, env) => new FlushDropper(core, ports, env);

describe('the simulator checks the production executor', () => {
  it('an executor that acks storageFlush without flushing loses acked writes at a power cut; the real one does not', () => {
    const seeds = Array.from({ length: 60 }, (_, i) => i + 1);
    const real = seeds.map((seed) => runSim({ seed }));
    expect(real.filter((r) => !r.ok).map((r) => `${r.seed}: ${r.failures.join('; ')}`)).toEqual([]);
    const mutant = seeds.map((seed) => runSim({ seed, makeExecutor: liar }));
    const lost = mutant.filter((r) => !r.ok && r.failures.some((f) => /lost acked write|holds bytes no host write produced/.test(f)));
    expect(lost.length, 'seeds where the lying flush was caught').toBeGreaterThan(5);
  });

  it('an executor that drops storageFlush never converges; the real one does', () => {
    for (const seed of [3, 4]) {
      expect(runSim({ seed, hostOps: 40 }).ok).toBe(true);
      const r = runSim({ seed, hostOps: 40, makeExecutor: dropper });
      expect(r.ok).toBe(false);
      expect(r.failures.join(' ')).toMatch(/did not converge/);
    }
  });
});
