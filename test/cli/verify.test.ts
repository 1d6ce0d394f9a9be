// `geomirror verify` against a real cluster of site processes (the e2e harness): replicas that
// agree -> exit 0; a mirror whose storage file was changed behind geomirror's back -> exit 1
// naming the byte range and the site; a site that is down -> unreachable (exit 2). The cluster
// also serves to check the per-peer metrics the runtime keeps.
import { execFile } from 'node:child_process';
import { openSync, writeSync, closeSync } from 'node:fs';
import { promisify } from 'node:util';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { Cluster, NbdWriter, planWrites } from '../e2e/harness.js';
import { formatMismatch, verifyCluster } from '../../src/cli/verify.js';
import { loadConfig } from '../../src/site/config.js';

const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const mib = 1024 * 1024;

async function verify(cluster: Cluster, ...args: string[]): Promise<{ code: number; out: string; err: string }> {
  try {
    const r = await promisify(execFile)(process.execPath, [bin, 'verify', '--config', cluster.configPath, ...args], { encoding: 'utf8' });
    return { code: 0, out: r.stdout, err: r.stderr };
  } catch (e) {
    const x = e as { code: number; stdout: string; stderr: string };
    return { code: x.code, out: x.stdout, err: x.stderr };
  }
}

describe('formatMismatch', () => {
  it('names the minority against the majority, or every group when there is none', () => {
    expect(formatMismatch({ startBytes: 3 * mib, endBytes: 4 * mib, regions: 1, groups: [['local', 'west'], ['east']] })).toBe('mismatch bytes 3145728-4194303 (1 MiB, 1 region): east differs from local, west');
    expect(formatMismatch({ startBytes: 0, endBytes: 4096, regions: 1, groups: [['a'], ['b']] })).toBe('mismatch bytes 0-4095 (4 KiB, 1 region): every site differs: a vs b');
  });
});

describe('geomirror verify on a live cluster', () => {
  let cluster: Cluster | undefined;
  afterAll(async () => cluster?.destroy());

  it('agrees on equal replicas, names a corrupted range on a mirror, and exits 2 on a site that is down', async () => {
    cluster = await Cluster.create({ volumeBytes: 8 * mib, cacheBytes: 4 * mib });
    await cluster.start();
    await cluster.waitInSync();
    const writer = await NbdWriter.connect(cluster.nbdPort);
    const errors = await writer.run(planWrites(7, 8 * mib, 2 * mib), 8);
    writer.close();
    expect(errors).toEqual([]);
    await cluster.waitInSync();

    // The same cluster checks the runtime's metrics (issue 8 item 3): ack latency per mirror,
    // in-flight per mirror (nothing left after the writes completed), writes a mirror received.
    const metrics = async (site: string) => cluster!.metricsText(site);
    const primary = await metrics('local');
    const acks = Number(/^geomirror_ack_latency_seconds_count\{[^}]*peer="east"[^}]*\} (\d+)$/m.exec(primary)?.[1]);
    expect(acks, primary).toBeGreaterThan(0);
    expect(primary).toMatch(/^geomirror_inflight_writes\{[^}]*peer="west"[^}]*\} 0$/m);
    expect(primary).toMatch(/^geomirror_resync_remaining_bytes\{[^}]*peer="east"[^}]*\} 0$/m);
    const eastMetrics = await metrics('east');
    expect(Number(/^geomirror_write_bytes_total\{[^}]*op="replicated"[^}]*\} (\d+)$/m.exec(eastMetrics)?.[1])).toBeGreaterThanOrEqual(2 * mib);

    const good = await verify(cluster);
    expect(good.code, good.err).toBe(0);
    expect(good.out).toContain('all 3 replicas agree: 8 regions of 1 MiB compared');

    // Change 3 bytes inside region 5 of east's replica while east is stopped.
    const east = cluster.site('east');
    east.child!.kill('SIGTERM'); // a clean stop: nothing left in its cache to replay over the change
    await east.exited;
    east.child = undefined;
    const fd = openSync(cluster.site('east').storagePath, 'r+');
    writeSync(fd, Buffer.from([0xde, 0xad, 0xbe]), 0, 3, 5 * mib + 1234);
    closeSync(fd);
    await cluster.restart('east');

    const bad = await verify(cluster, '--region-size', '256KiB');
    expect(bad.code, bad.err).toBe(1);
    expect(bad.out).toContain(`mismatch bytes ${5 * mib}-${5 * mib + 256 * 1024 - 1} (256 KiB, 1 region): east differs from local, west`);
    expect(bad.out).toContain('1 of 32 regions differ, in 1 range');

    // A site that is down makes the verify incomplete (the CLI maps this to exit 2).
    await cluster.kill9('west');
    const down = await verifyCluster({ config: loadConfig(cluster.configPath), regionBytes: mib });
    expect(down).toMatchObject({ kind: 'unreachable', site: 'west', error: 'connection refused (is the site running?)' });
  }, 80_000);
});
