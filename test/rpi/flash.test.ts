// `geomirror flash` (issue 11): on a locally made image with the Raspberry Pi OS layout it
// writes the image and puts the bundle, the site's config and key and cloud-init seed files
// into the FAT boot partition (read back here with mtools); it refuses an image without a FAT
// boot partition, a missing site name, a mounted target and an unconfirmed overwrite, each
// with a message that says why, and with the target's bytes unchanged.
import { loadConfig } from '../../src/site/config.js';
import { preparePki } from '../../src/site/pki.js';
import { execFileSync, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { flash } from '../../targets/rpi/flash.js';
import { TargetRefused } from '../../targets/rpi/target-check.js';
import { bootOffsetBytes, imageBytes, makePiImage, readFat, rootOffsetBytes } from './piimage.js';

const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-rpi-flash-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

const sha = (b: Buffer): string => createHash('sha256').update(b).digest('hex');
let piImg: string;
let noFatImg: string;
let bundle: string;
let cfg: string;
let key: Buffer;

beforeAll(async () => {
  piImg = makePiImage(dir, 'pi.img');
  noFatImg = makePiImage(dir, 'nofat.img', false);
  // flash copies whatever bundle it is given; a small stand-in keeps this file fast (the real
  // bundle is built and run in bundle.test.ts).
  const content = join(dir, 'bundle-src', 'geomirror-0.1.0-linux-arm64');
  mkdirSync(content, { recursive: true });
  writeFileSync(join(content, 'install.sh'), '#!/bin/sh\necho install\n');
  writeFileSync(join(content, 'payload.bin'), randomBytes(300_000));
  bundle = join(dir, 'geomirror-0.1.0-linux-arm64.tar.gz');
  execFileSync('tar', ['-czf', bundle, '-C', join(dir, 'bundle-src'), 'geomirror-0.1.0-linux-arm64']);
  mkdirSync(join(dir, 'keys'));
  key = Buffer.from(randomBytes(32).toString('hex') + '\n');
  writeFileSync(join(dir, 'keys', 'cluster.key'), key, { mode: 0o600 });
  cfg = join(dir, 'cluster.yaml');
  writeFileSync(
    cfg,
    `cluster: pis
secret: file:./keys/cluster.key
volume: { name: vol0, size: 1GiB, blockSize: 4096 }
sites:
  main: { role: primary, nbd: 0.0.0.0:10809, listen: 0.0.0.0:7400, cache: { device: "loopback:/var/lib/geomirror/main.cache", size: 64MiB }, storage: ["loopback:/var/lib/geomirror/main.img"], mirrors: [east] }
  east: { role: mirror, listen: 0.0.0.0:7401, admin: 0.0.0.0:9401, cache: { device: "loopback:/var/lib/geomirror/east.cache", size: 64MiB }, storage: ["usb:0781:5583:4C530001"] }
`,
  );
  await preparePki(loadConfig(cfg)); // the CA and the site certificates, as geomirror start or pki init make them
});

function geomirror(args: string[]): { status: number | null; stderr: string } {
  const r = spawnSync(process.execPath, [bin, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60_000 });
  return { status: r.status, stderr: r.stderr };
}

function randomTarget(name: string): { path: string; before: string } {
  const path = join(dir, name);
  const bytes = randomBytes(2 * 2 ** 20);
  writeFileSync(path, bytes);
  return { path, before: sha(bytes) };
}

function checkProvisioned(out: string, image: Buffer): void {
  const target = readFileSync(out);
  expect(target.length).toBe(imageBytes);
  // The root partition is the image's, byte for byte; flash touches only the boot partition.
  expect(sha(target.subarray(rootOffsetBytes)), 'root partition').toBe(sha(image.subarray(rootOffsetBytes)));
  expect(sha(target.subarray(0, bootOffsetBytes)), 'MBR and gap').toBe(sha(image.subarray(0, bootOffsetBytes)));
  expect(readFat(out, '/config.txt').toString()).toBe('arm_64bit=1\n');
  const bundleBack = readFat(out, '/geomirror/geomirror-0.1.0-linux-arm64.tar.gz');
  expect(sha(bundleBack)).toBe(sha(readFileSync(bundle)));
  expect(readFat(out, '/geomirror/geomirror-0.1.0-linux-arm64.tar.gz.sha256').toString()).toContain(sha(bundleBack));
  expect(readFat(out, '/geomirror/cluster.yaml').equals(readFileSync(cfg))).toBe(true);
  expect(readFat(out, '/geomirror/cluster.key').equals(key)).toBe(true);
  // Issue 17: the cluster CA and east's own certificate and key travel with it (installed
  // geomirror 0600 beside the key, then removed from the card).
  expect(readFat(out, '/geomirror/tls/ca.crt').equals(readFileSync(join(dir, 'keys', 'ca.crt')))).toBe(true);
  expect(readFat(out, '/geomirror/tls/site-east.key').equals(readFileSync(join(dir, 'keys', 'site-east.key')))).toBe(true);
  expect(readFat(out, '/geomirror/tls/site-east.crt').length).toBeGreaterThan(100);

  const userDataText = readFat(out, '/user-data').toString();
  expect(userDataText.startsWith('#cloud-config\n')).toBe(true);
  const ud = parse(userDataText) as { hostname: string; runcmd: string[][] };
  expect(ud.hostname).toBe('east');
  const cmds = ud.runcmd.map((c) => c.join(' '));
  const at = (re: RegExp): number => cmds.findIndex((c) => re.test(c));
  const nodeStep = at(/apt-get install -y nodejs/);
  const untar = at(/^tar -xzf \/boot\/firmware\/geomirror\/geomirror-0\.1\.0-linux-arm64\.tar\.gz -C \/opt\/geomirror/);
  const install = at(/^sh \/opt\/geomirror\/install\.sh --config \/boot\/firmware\/geomirror\/cluster\.yaml --site east --key \/boot\/firmware\/geomirror\/cluster\.key --key-dest \/etc\/geomirror\/keys\/cluster\.key --tls \/boot\/firmware\/geomirror\/tls$/);
  const enable = cmds.indexOf('systemctl enable --now geomirror@east.service');
  expect([nodeStep, untar, install, enable].every((i) => i >= 0), cmds.join('\n')).toBe(true);
  expect(nodeStep < untar && untar < install && install < enable).toBe(true);
  // The bundle's install.sh is what installs the unit and rules; it must ship them.
  const installSh = readFileSync(fileURLToPath(new URL('../../targets/rpi/install.sh', import.meta.url)), 'utf8');
  expect(installSh).toContain('install -m 0644 "$here/systemd/geomirror@.service" /etc/systemd/system/geomirror@.service');
  expect(installSh).toContain('/etc/udev/rules.d/60-geomirror.rules');
  expect(installSh).toContain('install -m 0600 -o geomirror -g geomirror "$key" "$keydest"');
  expect(cmds).toContain('rm -rf /boot/firmware/geomirror/tls');

  const md = parse(readFat(out, '/meta-data').toString()) as Record<string, string>;
  expect(md['instance-id']).toMatch(/^geomirror-east-/);
  const nc = parse(readFat(out, '/network-config').toString()) as { network: { version: number } };
  expect(nc.network.version).toBe(2);
}

describe('geomirror flash', () => {
  it('writes a .img and provisions its FAT boot partition', () => {
    const out = join(dir, 'card.img');
    const r = geomirror(['flash', '--image', piImg, '--config', cfg, '--site', 'east', '--out', out, '--bundle', bundle, '--yes']);
    expect(r.status, r.stderr).toBe(0);
    checkProvisioned(out, readFileSync(piImg));
  });

  it('writes a .img.xz (decompressed with xz) the same way', () => {
    execFileSync('xz', ['-k', '-1', '-T1', '-f', piImg]);
    const out = join(dir, 'card-xz.img');
    const r = geomirror(['flash', '--image', `${piImg}.xz`, '--config', cfg, '--site', 'east', '--out', out, '--bundle', bundle, '--yes']);
    expect(r.status, r.stderr).toBe(0);
    checkProvisioned(out, readFileSync(piImg));
  });

  it('refuses an image without a FAT boot partition, target untouched', () => {
    const t = randomTarget('t-nofat.img');
    const r = geomirror(['flash', '--image', noFatImg, '--config', cfg, '--site', 'east', '--out', t.path, '--bundle', bundle, '--yes']);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/no FAT boot partition in the MBR partition table \(found partition 1 type 0x83\)/);
    expect(sha(readFileSync(t.path))).toBe(t.before);
  });

  it('refuses a missing site name, and a site the config does not have, target untouched', () => {
    const t = randomTarget('t-nosite.img');
    const r = geomirror(['flash', '--image', piImg, '--config', cfg, '--out', t.path, '--bundle', bundle, '--yes']);
    expect(r.status).not.toBe(0);
    expect(r.stderr).toContain("required option '-s, --site <name>' not specified");
    const r2 = geomirror(['flash', '--image', piImg, '--config', cfg, '--site', 'west', '--out', t.path, '--bundle', bundle, '--yes']);
    expect(r2.status).toBe(1);
    expect(r2.stderr).toContain('site "west" is not in');
    expect(r2.stderr).toContain('its sites are: main, east');
    expect(sha(readFileSync(t.path))).toBe(t.before);
  });

  it('refuses a mounted target, target untouched', async () => {
    const t = randomTarget('t-mounted.img');
    const mountinfo = `22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw\n87 22 7:0 / ${t.path.replace(/ /g, '\\040')} rw,relatime shared:40 - vfat /dev/loop0 rw\n`;
    const run = flash({ image: piImg, configFile: cfg, site: 'east', out: t.path, bundle, yes: true, system: { mountinfo, swaps: '', sysDir: join(dir, 'no-sys') }, log: () => {} });
    await expect(run).rejects.toThrow(TargetRefused);
    await expect(run).rejects.toThrow(/is mounted .*unmount it first/);
    expect(sha(readFileSync(t.path))).toBe(t.before);
  });

  it('refuses a file target mounted through a loop device, target untouched', async () => {
    const t = randomTarget('t-loop.img');
    const sys = join(dir, 'fake-sys');
    mkdirSync(join(sys, 'class', 'block', 'loop3', 'loop'), { recursive: true });
    mkdirSync(join(sys, 'class', 'block', 'loop3', 'loop3p1'), { recursive: true });
    writeFileSync(join(sys, 'class', 'block', 'loop3', 'loop', 'backing_file'), `${t.path}\n`);
    writeFileSync(join(sys, 'class', 'block', 'loop3', 'dev'), '7:3\n');
    writeFileSync(join(sys, 'class', 'block', 'loop3', 'loop3p1', 'dev'), '259:9\n');
    const mountinfo = '22 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw\n90 22 259:9 / /media/bootfs rw - vfat /dev/loop3p1 rw\n';
    const run = flash({ image: piImg, configFile: cfg, site: 'east', out: t.path, bundle, yes: true, system: { mountinfo, swaps: '', sysDir: sys }, log: () => {} });
    await expect(run).rejects.toThrow(/through loop device \/dev\/loop3, at \/media\/bootfs/);
    expect(sha(readFileSync(t.path))).toBe(t.before);
    // The same loop device not mounted: no refusal from the mount check (flash then proceeds).
    const quiet = { mountinfo: '22 1 259:2 / / rw - ext4 /dev/nvme0n1p2 rw\n', swaps: '', sysDir: sys };
    const out = await flash({ image: piImg, configFile: cfg, site: 'east', out: t.path, bundle, yes: true, system: quiet, log: () => {} });
    expect(out.boot.offsetBytes).toBe(bootOffsetBytes);
  });

  it('asks before overwriting; with no terminal and no --yes it refuses, target untouched', () => {
    const t = randomTarget('t-noyes.img');
    const r = geomirror(['flash', '--image', piImg, '--config', cfg, '--site', 'east', '--out', t.path, '--bundle', bundle]);
    expect(r.status).toBe(1);
    expect(r.stderr).toMatch(/Overwrite .* Cannot ask: no terminal\. Pass --yes/);
    expect(sha(readFileSync(t.path))).toBe(t.before);
    expect(existsSync(join(dir, 'never.img'))).toBe(false);
  });
});
