// Consistency groups in the failover simulator (issue 20: "the simulator gains multi-volume
// groups: at least 500 seeds with failovers check the group cut"). The replicated address space
// is split into 2-4 volumes (region-aligned slices, test/sim/group.ts); a database-like host
// writes sequence-numbered records to them one after another (each after the previous one was
// acked), with random writes beside in half the seeds. After every failover the host reads every
// volume's log on the new primary (through the core where its copy is not whole) and the records
// present must be a prefix of the issue order holding every acked record; at the end the same on
// every in-sync replica's storage. group-mutation.test.ts shows the check failing.
import { describe, expect, it } from 'vitest';
import { Prng } from '../../hal/prng.js';
import { checkGroupCut, fillRecord, makeLayout, recordPlace, type GroupLayout } from './group.js';
import { runFailover } from './failover.js';

const blockBytes = 512;

/** The log areas of a layout after records `ks` were applied in that order (a site's storage). */
function image(g: GroupLayout, ks: number[]): Uint8Array[] {
  const logs = g.volumes.map((v) => new Uint8Array(v.logBytes));
  for (const k of ks) {
    const p = recordPlace(g, k);
    const rec = new Uint8Array(g.recordBlocks * blockBytes);
    fillRecord(g, k, rec);
    logs[p.volume]!.set(rec, p.offsetBytes - g.volumes[p.volume]!.offsetBytes);
  }
  return logs;
}

const range = (a: number, b: number): number[] => Array.from({ length: b - a + 1 }, (_, i) => a + i);

describe('group cut check (test/sim/group.ts)', () => {
  const g = makeLayout(new Prng(5), 3, 64 * 1024, 4096, blockBytes, true);
  const ring = g.volumes.length * g.slots;

  it('lays volumes out in order, region-aligned, disjoint, inside the group', () => {
    for (let seed = 1; seed <= 50; seed++) {
      for (const n of [2, 3, 4]) {
        const l = makeLayout(new Prng(seed), n, 64 * 1024, 4096, blockBytes, true);
        expect(l.volumes).toHaveLength(n);
        let end = 0;
        for (const v of l.volumes) {
          expect(v.offsetBytes % 4096).toBe(0);
          expect(v.offsetBytes).toBeGreaterThanOrEqual(end);
          expect(v.logBytes).toBeLessThan(v.sizeBytes);
          end = v.offsetBytes + v.sizeBytes;
        }
        expect(end).toBeLessThanOrEqual(64 * 1024);
      }
    }
  });

  it('accepts every prefix of the issue order, also after the ring wrapped', () => {
    for (const n of [0, 1, 2, ring - 1, ring, ring + 1, 3 * ring + 2]) {
      const logs = image(g, range(1, n));
      const r = checkGroupCut(g, (v) => logs[v]!, n, n + 1, 'test');
      expect(r.error).toBeUndefined();
      expect(r.cut).toBe(n);
    }
  });

  it('finds a record missing while a later one is present (also one overwritten on the ring)', () => {
    const logs = image(g, range(1, 9).filter((k) => k !== 6));
    expect(checkGroupCut(g, (v) => logs[v]!, 5, 9, 'test').error).toMatch(/group cut broken: record 9 is present, but volume \d slot \d+ holds nothing instead of record 6 \(record 6 missing/);
    const wrapped = image(g, range(1, ring + 4).filter((k) => k !== ring + 2));
    expect(checkGroupCut(g, (v) => wrapped[v]!, 0, ring + 4, 'test').error).toMatch(new RegExp(`holds record 2 instead of record ${ring + 2}`));
  });

  it('finds an acked record missing, a record never issued, a torn or misplaced record', () => {
    const logs = image(g, range(1, 7));
    expect(checkGroupCut(g, (v) => logs[v]!, 8, 8, 'test').error).toMatch(/acked record 8 is missing \(the newest record present is 7\)/);
    expect(checkGroupCut(g, (v) => logs[v]!, 7, 6, 'test').error).toMatch(/record 7 is present but only records up to 6 were issued/);
    const p = recordPlace(g, 7);
    const at = p.offsetBytes - g.volumes[p.volume]!.offsetBytes;
    const torn = image(g, range(1, 7));
    torn[p.volume]![at + 100] ^= 1;
    expect(checkGroupCut(g, (v) => torn[v]!, 7, 7, 'test').error).toMatch(/fails its checksum/);
    // Record 7's bytes in record 1's slot (a write that landed at the wrong offset).
    const moved = image(g, range(1, 7));
    const q = recordPlace(g, 1);
    moved[q.volume]!.set(logs[p.volume]!.slice(at, at + g.recordBlocks * blockBytes), q.offsetBytes - g.volumes[q.volume]!.offsetBytes);
    expect(checkGroupCut(g, (v) => moved[v]!, 7, 7, 'test').error).toMatch(/holds part 0 of record 7 of volume \d slot \d+ \(misplaced\)/);
  });
});

const seedsCount = 1000;

describe('failover simulation with a consistency group of 2-4 volumes and a dependent-record log workload', () => {
  it(`${seedsCount} seeds (every failover scenario): the new primary serves a prefix of the records holding every acked one, after every failover and on every in-sync replica at the end`, () => {
    const failures: string[] = [];
    const byScenario: Record<string, number> = {};
    const byVolumes: Record<string, number> = {};
    const seen = { recoveries: 0, seedsWithRecovery: 0, inFlightKept: 0, reissued: 0, readsByMirror: 0, threeFailovers: 0, load: 0, spanning: 0, finalChecks: 0 };
    for (let seed = 1; seed <= seedsCount; seed++) {
      const r = runFailover(seed, { volumes: 'seeded' });
      failures.push(...r.failures.map((f) => `${f} (replay: npm run sim -- --topology failover --volumes seeded --seed ${seed})`));
      if (failures.length >= 5) break;
      const st = r.stats;
      byScenario[st.scenario as string] = (byScenario[st.scenario as string] ?? 0) + 1;
      byVolumes[st.volumes as number] = (byVolumes[st.volumes as number] ?? 0) + 1;
      const recoveries = st.recoveries as number;
      seen.recoveries += recoveries;
      if (recoveries > 0) seen.seedsWithRecovery++;
      if (recoveries >= 3) seen.threeFailovers++;
      if ((st.recoveredInFlight as number) > 0) seen.inFlightKept++;
      if ((st.recordsReissued as number) > 0) seen.reissued++;
      if ((st.recoveryReadsByMirror as number) > 0) seen.readsByMirror++;
      if (st.load === 1) seen.load++;
      if ((st.ackedByNewPrimary as number) > 0 && (st.acked as number) > (st.ackedByNewPrimary as number)) seen.spanning++;
      seen.finalChecks += (st.groupChecks as number) - recoveries;
    }
    expect(failures).toEqual([]);
    // Every scenario and group size ran; the records cross the failovers.
    for (const s of ['crash', 'crashRejoin', 'isolate', 'cutStandby', 'none', 'standbyCrash', 'switchover', 'standbyBehind', 'repeated']) expect(byScenario[s] ?? 0, s).toBeGreaterThan(seedsCount / 20);
    for (const n of [2, 3, 4]) expect(byVolumes[n] ?? 0, `${n} volumes`).toBeGreaterThan(seedsCount / 5);
    expect(seen.seedsWithRecovery, 'seeds whose cut was read after a failover').toBeGreaterThan(seedsCount / 2);
    expect(seen.threeFailovers, 'seeds with three failovers, each cut read').toBeGreaterThan(seedsCount / 20);
    expect(seen.spanning, 'seeds with records acked on both sides of a failover').toBeGreaterThan(seedsCount / 2);
    // The record in flight at the failover: sometimes inside the new primary's cut, sometimes issued again.
    expect(seen.inFlightKept, 'the in-flight record made it into the cut').toBeGreaterThan(seedsCount / 10);
    expect(seen.reissued, 'a record issued again after the recovery').toBeGreaterThan(seedsCount / 10);
    expect(seen.readsByMirror, 'recovery reads served through the core (the new primary\'s copy not whole yet)').toBeGreaterThan(10);
    expect(seen.load, 'seeds with random writes beside the log').toBeGreaterThan(seedsCount / 3);
    expect(seen.finalChecks, 'group cuts checked on replicas at the end').toBeGreaterThan(2 * seedsCount);
  });

  it('a group with the random workload keeps every write inside its volume and loses no acked write', () => {
    for (let seed = 1; seed <= 40; seed++) {
      const r = runFailover(seed, { volumes: 2 + (seed % 3), workload: 'random' });
      expect(r.failures).toEqual([]);
      expect(r.stats.volumes).toBe(2 + (seed % 3));
    }
  });
});
