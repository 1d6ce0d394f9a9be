// The group-cut check of the multi-volume simulator (test/sim/group.ts; failover.ts with
// `volumes`) can fail. The standby runs a deliberately wrong executor: while it follows, every
// other storage write of a record is answered at once and lands 1.5 s later (a write-back cache
// that acks and reorders), so its disk holds record k + 1 without record k. Once it is promoted,
// what it serves is no prefix of the issue order. The held writes land later with the same
// bytes the host writes again, so the end state often looks right: the final per-block and
// replica checks alone pass many of the seeds whose cut the group check finds broken.
// Second, a wrong site layer: the host's reads of the new primary go to its storage even where
// the core says the copy is not whole (host-api.ts asks readable() first): on a fixed seed the
// promoted standby's journal replay is still pending and the read shows a later record without
// an earlier one.
import { describe, expect, it } from 'vitest';
import type { CoreAction, Role } from '../../src/core/types.js';
import { Standby } from '../../src/core/standby.js';
import { Executor, type ExecutorEnv, type ExecutorPorts } from '../../src/site/executor.js';
import { isRecordWrite } from './group.js';
import { runFailover, type FailoverOptions } from './failover.js';

const holdMs = 1500;

class RecordReorderer extends Executor {
  private n = 0;

  constructor(core: Role, private readonly p: ExecutorPorts, env: ExecutorEnv, private readonly later: (delayMs: number, fn: () => void) => void) {
    super(core, p, env);
  }

  protected override execute(a: CoreAction): void {
    const following = this.core instanceof Standby && this.core.status().phase === 'following';
    if (a.type !== 'storageWrite' || !following || !isRecordWrite(a.payload) || this.n++ % 2 === 1) {
      super.execute(a);
      return;
    }
    this.feed({ type: 'storageWritten', opId: a.opId }); // "done": the next dependent record comes
    const storage = this.p.storage;
    if (storage === undefined) throw new Error('the reordering executor runs at a site with storage');
    const bytes = a.payload.slice(); // its own copy: the core lets the buffer go once the write is "done" and flushed
    this.later(holdMs, () => storage.write(a.offsetBytes, bytes, a.fua, () => undefined));
  }
}

const reorderOnBackup: FailoverOptions['makeExecutor'] = (site, later) => (site === 'backup' ? (core, ports, env) => new RecordReorderer(core, ports, env, later) : undefined);

describe('the group-cut check catches a standby that applies dependent writes out of order, and a site layer that reads around the core', () => {
  it('40 seeds: the real executor passes every one; with the reordering standby the promoted site serves a broken cut, often where the other checks see nothing', () => {
    const seeds = Array.from({ length: 40 }, (_, i) => i + 1);
    const opts: FailoverOptions = { volumes: 'seeded', workload: 'log' };
    const real = seeds.map((seed) => runFailover(seed, opts));
    expect(real.filter((r) => !r.ok).map((r) => r.failures.join('; '))).toEqual([]);
    const mutant = seeds.map((seed) => runFailover(seed, { ...opts, makeExecutor: reorderOnBackup }));
    const cutBroken = mutant.filter((r) => r.failures.some((f) => /after failover: backup \(epoch \d+, life \d+\) serves: group cut broken: record \d+ is present, but volume \d slot \d+ holds .* \(record \d+ missing: a later write is present without an earlier one\)/.test(f)));
    expect(cutBroken.length, 'seeds where the promoted standby served a later record without an earlier one').toBeGreaterThan(15);
    // Those seeds with the group-cut check off: only the end state is checked.
    const unchecked = cutBroken.map((r) => runFailover(r.seed, { ...opts, makeExecutor: reorderOnBackup, groupCheck: false }));
    expect(unchecked.filter((r) => r.ok).length, 'broken cuts the end-state checks alone miss').toBeGreaterThan(10);
  });

  it('seed 486: a site layer that reads the promoted standby\'s storage while its journal replay is pending serves a broken cut; through the core the cut holds', () => {
    // standbyCrash: backup restarts as the acting primary; record 11 is in its journal, not yet
    // re-performed on storage, while a later record is on storage (readable() is false for that
    // range). (Seed 675 showed this until the standby's '@held' records changed the schedule:
    // the scenario is the seed's, not the code's; a search of seeds 1..6000 finds 486 and 1239.)
    const opts: FailoverOptions = { volumes: 'seeded', workload: 'log' };
    const real = runFailover(486, opts);
    expect(real.failures).toEqual([]);
    expect(real.stats.recoveryReadsByMirror as number).toBeGreaterThan(0);
    const wrong = runFailover(486, { ...opts, readsIgnoreCore: true });
    expect(wrong.failures.join(' ')).toMatch(/after failover: backup .* serves: group cut broken: .*record 11 missing: a later write is present without an earlier one/);
  });
});
