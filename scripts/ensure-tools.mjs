#!/usr/bin/env node
// Makes sure the real tools the interop tests drive are present (the tests use the real
// nbdinfo, nbdcopy, nbdsh, qemu-img, qemu-io, fio, socat, nbdkit and etcd, never stand-ins). On a Debian
// machine where we are root this installs what is missing with apt-get, so `npm test` is one
// command on a fresh clone; elsewhere it names the packages and stops.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';

const toolsByPackage = {
  'qemu-utils': ['qemu-img', 'qemu-io', 'qemu-nbd'],
  // nbdfuse: the issue 16 storage-error tests serve a failing disk (nbdkit's error filter) as a file.
  'libnbd-bin': ['nbdinfo', 'nbdcopy', 'nbdfuse'],
  // nbdsh: libnbd from Python, the client that sends requests of up to 64 MiB (test/nbd/interop).
  'python3-libnbd': ['nbdsh'],
  fio: ['fio'],
  socat: ['socat'],
  nbdkit: ['nbdkit'],
  // The Raspberry Pi bundle and flash tests (test/rpi): arm64 emulation, FAT tools, unit checks.
  'qemu-user-static': ['qemu-aarch64-static'],
  mtools: ['mcopy', 'mdir'],
  dosfstools: ['mkfs.vfat'],
  fdisk: ['sfdisk'],
  e2fsprogs: ['mkfs.ext4'],
  'xz-utils': ['xz'],
  systemd: ['systemd-analyze'],
  // block: devices on loop devices (losetup, partx, blockdev) and the install test's clean copy (git).
  mount: ['losetup'],
  'util-linux': ['partx', 'blockdev'],
  git: ['git'],
  // etcd as the failover coordinator (issue 20 item 3): a real etcd member per test, and etcdctl.
  'etcd-server': ['etcd'],
  'etcd-client': ['etcdctl'],
};

// Packages that install files, not commands: checked by path.
const filesByPackage = {
  'libc6-arm64-cross': ['/usr/aarch64-linux-gnu/lib/ld-linux-aarch64.so.1'],
  'libstdc++6-arm64-cross': ['/usr/aarch64-linux-gnu/lib/libstdc++.so.6'],
};

const have = (cmd) => spawnSync('sh', ['-c', `command -v ${cmd}`], { stdio: 'ignore' }).status === 0;
const missing = Object.entries(toolsByPackage)
  .filter(([, cmds]) => cmds.some((c) => !have(c)))
  .map(([pkg]) => pkg)
  .concat(Object.entries(filesByPackage).filter(([, files]) => files.some((f) => !existsSync(f))).map(([pkg]) => pkg));

if (missing.length === 0) process.exit(0);

const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;
if (!isRoot || !have('apt-get')) {
  console.error(`geomirror tests need these Debian packages: ${missing.join(' ')}`);
  console.error(`install them with: sudo apt-get update && sudo apt-get install -y ${missing.join(' ')}`);
  process.exit(1);
}
console.error(`installing test tools: ${missing.join(' ')}`);
const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
execFileSync('apt-get', ['update', '-qq'], { stdio: 'inherit', env });
execFileSync('apt-get', ['install', '-y', '-qq', ...missing], { stdio: 'inherit', env });
