// The systemd unit passes `systemd-analyze verify` (no errors, no warnings about our file), and
// the udev rules generated from a cluster file match the site's USB disk by vendor/product/serial
// and its serial port, for the service user.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/site/config.js';
import { udevRules } from '../../targets/rpi/udev.js';

const unitFile = fileURLToPath(new URL('../../targets/rpi/geomirror@.service', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-rpi-unit-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

describe('geomirror@.service', () => {
  it('passes systemd-analyze verify as an instance', () => {
    let text = readFileSync(unitFile, 'utf8');
    // verify checks that ExecStart's program exists; on a machine whose node is not /usr/bin/node
    // (the Pi's nodejs package path) point it at this node, changing nothing else.
    if (!existsSync('/usr/bin/node')) text = text.replace('ExecStart=/usr/bin/node ', `ExecStart=${process.execPath} `);
    const inst = join(dir, 'geomirror@east.service');
    writeFileSync(inst, text);
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', inst], { encoding: 'utf8' });
    const ours = `${r.stdout}\n${r.stderr}`.split('\n').filter((l) => l.includes('geomirror@'));
    expect(r.status, r.stderr).toBe(0);
    expect(ours, 'systemd-analyze messages about the unit').toEqual([]);
  });

  it('a broken unit fails the same check (the check can fail)', () => {
    const bad = join(dir, 'geomirror@bad.service');
    writeFileSync(bad, readFileSync(unitFile, 'utf8').replace('Restart=on-failure', 'Restart=on-failur'));
    const r = spawnSync('systemd-analyze', ['verify', '--man=no', bad], { encoding: 'utf8' });
    expect(`${r.stdout}${r.stderr}`).toContain('geomirror@bad.service');
  });

  it('has what the site needs: own user, device groups, restart, stop timeout, state dir, devices reachable', () => {
    const text = readFileSync(unitFile, 'utf8');
    for (const line of [
      'User=geomirror',
      'SupplementaryGroups=plugdev dialout',
      'Restart=on-failure',
      'TimeoutStopSec=120s',
      'StateDirectory=geomirror',
      'DeviceAllow=char-usb_device rw',
      'DeviceAllow=char-ttyUSB rw',
      'ExecStart=/usr/bin/node /opt/geomirror/lib/src/cli/main.js site --config /etc/geomirror/cluster.yaml --site %i',
    ]) {
      expect(text.split('\n'), line).toContain(line);
    }
    expect(text).not.toMatch(/^PrivateDevices=yes/m);
    expect(text).not.toMatch(/^MemoryDenyWriteExecute=yes/m);
  });
});

describe('install.sh', () => {
  it('is valid sh and installs the unit and the generated udev rules', () => {
    const file = fileURLToPath(new URL('../../targets/rpi/install.sh', import.meta.url));
    const r = spawnSync('sh', ['-n', file], { encoding: 'utf8' });
    expect(r.status, r.stderr).toBe(0);
    const text = readFileSync(file, 'utf8');
    expect(text).toContain('install -m 0644 "$here/systemd/geomirror@.service" /etc/systemd/system/geomirror@.service');
    expect(text).toContain('node "$here/lib/targets/rpi/udev-rules.js" /etc/geomirror/cluster.yaml "$site"');
    expect(text).toContain('udevadm control --reload-rules');
  });
});

describe('udev rules', () => {
  it('give the USB disk (vendor/product/serial) and serial port of the site to the service user, keep the disk unmounted', () => {
    const cfg = join(dir, 'cluster.yaml');
    writeFileSync(join(dir, 'cluster.key'), 'ab'.repeat(32));
    writeFileSync(
      cfg,
      `cluster: pis
secret: file:./cluster.key
volume: { name: vol0, size: 1GiB, blockSize: 4096 }
sites:
  main: { role: primary, nbd: 0.0.0.0:10809, cache: { device: "memory:", size: 64MiB }, storage: ["memory:"], mirrors: [east] }
  east: { role: mirror, listen: 0.0.0.0:7401, cache: { device: "serial:/dev/ttyACM0?baud=921600", size: 64MiB }, storage: ["usb:0781:5583:4C530001", "serial:/dev/serial/by-id/usb-acme-if00"] }
`,
    );
    const config = loadConfig(cfg);
    const rules = udevRules(config.sites.east!).split('\n');
    expect(rules).toContain('ACTION=="add|change", SUBSYSTEM=="usb", ENV{DEVTYPE}=="usb_device", ATTR{idVendor}=="0781", ATTR{idProduct}=="5583", ATTR{serial}=="4C530001", OWNER="geomirror", GROUP="plugdev", MODE="0660"');
    expect(rules).toContain('SUBSYSTEM=="block", ATTRS{idVendor}=="0781", ATTRS{idProduct}=="5583", ATTRS{serial}=="4C530001", ENV{UDISKS_IGNORE}="1", ENV{UDISKS_AUTO}="0"');
    expect(rules.some((l) => l.startsWith('ACTION=="bind"') && l.includes('DRIVER=="usb-storage"') && l.includes('ATTRS{serial}=="4C530001"') && l.includes('usb-storage/unbind'))).toBe(true);
    expect(rules).toContain('ACTION=="add|change", SUBSYSTEM=="tty", KERNEL=="ttyACM0", OWNER="geomirror", GROUP="dialout", MODE="0660"');
    expect(rules).toContain('ACTION=="add|change", SUBSYSTEM=="tty", SYMLINK=="serial/by-id/usb-acme-if00", OWNER="geomirror", GROUP="dialout", MODE="0660"');
    expect(udevRules(config.sites.main!)).toContain('names no usb: or serial: devices');
  });
});
