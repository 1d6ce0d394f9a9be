// `geomirror devices`: the storage hardware this node can see (kernel block devices, USB
// mass-storage disks, serial block devices), each with the device string to paste into a
// cluster file, and for kernel block devices their size, model and whether they are mounted. The discovery and
// its wording live in hal/devices.ts (hal owns what a device is); this file only wires the
// command. Listing never opens or claims a device, so it is safe next to a mounted disk.
import type { Command } from 'commander';

export function registerDevices(program: Command): void {
  program
    .command('devices')
    .description('list kernel block devices, USB mass-storage disks and serial ports this node can use as storage, with their device strings')
    .option('--json', 'print the listing as JSON (for scripts)')
    .option('--dev-dir <dir>', 'where to look for serial device nodes', '/dev')
    .addHelpText(
      'after',
      `
Each line starts with the device string for a cluster file's storage: list, e.g.
  storage: ["block:/dev/disk/by-id/usb-SanDisk_..."]   storage: ["usb:0781:5583:4C530001"]
  storage: ["serial:/dev/serial/by-id/usb-...?baud=921600"]
A kernel block device that is mounted (or has LVM, RAID or swap on it) is marked so; geomirror
refuses it until it is free.

Examples:
  $ geomirror devices
  $ geomirror devices --json | jq '.block.devices[] | select(.inUse == null) | .deviceString'`,
    )
    .action(async (opts: { json?: boolean; devDir: string }) => {
      // Loaded here: the discovery (USB, serial, sysfs) is not for `geomirror --help` (issue 19).
      const { formatDevices, listDevices } = await import('../../hal/devices.js');
      const list = await listDevices({ devDir: opts.devDir });
      process.stdout.write(opts.json ? `${JSON.stringify(list, null, 2)}\n` : formatDevices(list));
    });
}
