// `geomirror devices` through the real command: on these machines there is no USB bus and no
// serial hardware, so the listing must say so plainly (not crash, not print an empty screen).
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';

const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
// An empty folder as the serial device dir, so the serial half is the same on every host.
const devDir = mkdtempSync(join(tmpdir(), 'geomirror-devices-'));
afterAll(() => rmSync(devDir, { recursive: true, force: true }));
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
