// Issue 19 acceptance: a three-site cluster whose every site keeps its replica on a Linux kernel
// block device (`block:/dev/loopN`, one loop device per site over a sparse file), each site its
// own `geomirror site` process. 64 MiB written over NBD with nbdcopy arrive byte-identical on
// all three devices. Skipped with the reason where loop devices cannot be made (not root).
import { randomBytes } from 'node:crypto';
import { execFileSync } from 'node:child_process';
import { closeSync, openSync, readFileSync, readSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { attachLoop, detachAllLoops, loopUnavailable } from '../hal/loopdev.js';
import { Cluster, sha256 } from './harness.js';

const MiB = 1024 * 1024;
let cluster: Cluster | undefined;
afterAll(async () => {
  await cluster?.destroy();
  detachAllLoops();
});

/** The first `bytes` of a block device, read through the kernel like any reader of the disk. */
function readDevice(path: string, bytes: number): Buffer {
  const out = Buffer.alloc(bytes);
  const fd = openSync(path, 'r');
  try {
    for (let done = 0; done < bytes; ) {
      const n = readSync(fd, out, done, bytes - done, done);
      if (n === 0) throw new Error(`${path} ended at byte ${done}`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return out;
}

describe.skipIf(loopUnavailable !== undefined)(`three sites on kernel block devices${loopUnavailable ? ` (skipped: ${loopUnavailable})` : ''}`, () => {
  it('64 MiB over NBD land identically on every site\'s block:/dev/loopN', async () => {
    const devices = new Map<string, string>();
    cluster = await Cluster.create({
      volumeBytes: 64 * MiB,
      storage: (name, image) => {
        const loop = attachLoop(image);
        devices.set(name, loop);
        return `block:${loop}`;
      },
    });
    const c = cluster;
    expect([...devices.keys()].sort()).toEqual(['east', 'local', 'west']);
    expect(readFileSync(c.configPath, 'utf8').match(/storage: \["block:\/dev\/loop\d+"\]/g)).toHaveLength(3);
    await c.start();
    await c.waitInSync();

    const data = randomBytes(64 * MiB);
    const src = join(c.dir, 'source.img');
    writeFileSync(src, data);
    execFileSync('nbdcopy', ['--flush', src, `nbd://127.0.0.1:${c.nbdPort}/vol0`], { timeout: 120_000 });

    const want = sha256(data);
    for (const [name, loop] of devices) expect(sha256(readDevice(loop, 64 * MiB)), `${name} on ${loop}`).toBe(want);
    await c.waitInSync();
    for (const [name] of devices) expect(c.logText(name), name).not.toMatch(/"level":"(error|fatal)"/);
  });
});
