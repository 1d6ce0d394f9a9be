// `geomirror devices` through the real command: on these machines there is no USB bus and no
// serial hardware, so the listing must say so plainly (not crash, not print an empty screen);
// kernel block devices are listed with model, size and whether they are mounted (a loop device
// attached for the test, where this machine can make one).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { attachLoop, detachAllLoops, loopUnavailable } from '../hal/loopdev.js';

const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
// An empty folder as the serial device dir, so the serial half is the same on every host.
const devDir = mkdtempSync(join(tmpdir(), 'geomirror-devices-'));
afterAll(() => {
  detachAllLoops();
  rmSync(devDir, { recursive: true, force: true });
});
const noUsbBus = !existsSync('/sys/bus/usb/devices');

const run = async (...args: string[]): Promise<string> => (await promisify(execFile)(process.execPath, [bin, 'devices', '--dev-dir', devDir, ...args], { encoding: 'utf8' })).stdout;

describe('geomirror devices', () => {
  // Both processes start together: each pays Node's start-up, the test pays it once.
  const text = run();
  const json = run('--json');

  it('prints a clear empty listing with the reason', async () => {
    const out = await text;
    expect(out).toContain('USB mass-storage devices:');
    if (noUsbBus) expect(out).toContain('none found (no USB bus on this machine');
    expect(out).toContain(`Serial ports (scan of ${devDir}):`);
    expect(out).toContain('  none found (looked for /dev/serial/by-id');
  });

  it('--json gives the same listing as data', async () => {
    const list = JSON.parse(await json) as { usb: { disks: unknown[]; problem?: string }; serial: { ports: unknown[]; source: string } };
    expect(list.serial.ports).toEqual([]);
    expect(list.serial.source).toBe(`scan of ${devDir}`);
    if (noUsbBus) {
      expect(list.usb.disks).toEqual([]);
      expect(list.usb.problem).toMatch(/no USB bus/);
    }
  });
});

interface BlockListing {
  deviceString: string;
  name: string;
  sizeBytes: number;
  logicalBlockSizeBytes: number;
  model?: string;
  mounts: unknown[];
  inUse: string | null;
}

describe.skipIf(loopUnavailable !== undefined)(`geomirror devices: kernel block devices${loopUnavailable ? ` (skipped: ${loopUnavailable})` : ''}`, () => {
  it('lists a loop device with its model (the backing file), size, block size, and as free', async () => {
    const backing = join(devDir, 'listed.img');
    const loop = attachLoop(backing, { sizeBytes: 48 * 2 ** 20, sectorSizeBytes: 4096 });
    const name = loop.replace('/dev/', '');
    const list = JSON.parse(await run('--json')) as { block: { devices: BlockListing[] } };
    const d = list.block.devices.find((x) => x.name === name);
    expect(d, JSON.stringify(list.block)).toMatchObject({ deviceString: `block:${loop}`, sizeBytes: 48 * 2 ** 20, logicalBlockSizeBytes: 4096, model: `loop device over ${backing}`, mounts: [], inUse: null });
    expect(await run()).toContain(`  block:${loop}  ${name}: loop device over ${backing}, 48.0 MiB, 4096-byte blocks; free\n`);
  });
});
