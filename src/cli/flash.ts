// `geomirror flash --image PI_OS.img[.xz] --config cluster.yaml --site NAME --out TARGET`:
// one command per Raspberry Pi site, from an empty SD card to a card that boots into the site
// (issue 11). The work is in targets/rpi/flash.ts; this file is the command line and the question.
import { createInterface } from 'node:readline/promises';
import type { Command } from 'commander';

interface FlashCliOptions {
  image: string;
  config: string;
  site: string;
  out: string;
  bundle?: string;
  yes?: boolean;
}

async function askYes(question: string): Promise<boolean> {
  const rl = createInterface({ input: process.stdin, output: process.stderr });
  try {
    return (await rl.question(`${question} Type yes to continue: `)).trim().toLowerCase() === 'yes';
  } finally {
    rl.close();
  }
}

export function registerFlash(program: Command): void {
  program
    .command('flash')
    .description('write a Raspberry Pi OS image to an SD card (or image file) that boots into one site')
    .requiredOption('-i, --image <file>', 'Raspberry Pi OS image, .img or .img.xz (xz needs the xz program)')
    .requiredOption('-c, --config <file>', 'the cluster file (YAML); copied to /etc/geomirror/cluster.yaml on the Pi')
    .requiredOption('-s, --site <name>', 'which site of the file this card runs')
    .requiredOption('-o, --out <target>', 'the SD card (/dev/sdX, /dev/mmcblkN) or an image file to create')
    .option('--bundle <file>', 'the arm64 bundle (default: targets/rpi/dist/geomirror-VERSION-linux-arm64.tar.gz; npm run build:rpi)')
    .option('-y, --yes', 'overwrite the target without asking')
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror flash --image 2025-10-01-raspios-trixie-arm64-lite.img.xz \\
      --config cluster.yaml --site east --out /dev/sdb
  $ geomirror flash -i pi.img -c cluster.yaml -s west -o west.img --yes

Refuses a target that is mounted or holds the running system, and an image without a FAT boot
partition. Files go into the boot partition with mtools (no mounting, no root for a file target).`,
    )
    .action(async (opts: FlashCliOptions) => {
      // Loaded here, not at the top: the image writer and its checks are not for
      // `geomirror --help` (issue 19).
      const [{ ConfigError }, { flash, FlashError }, { PartitionTableError }, { TargetRefused }] = await Promise.all([
        import('../site/config.js'),
        import('../../targets/rpi/flash.js'),
        import('../../targets/rpi/mbr.js'),
        import('../../targets/rpi/target-check.js'),
      ]);
      try {
        await flash({
          image: opts.image,
          configFile: opts.config,
          site: opts.site,
          out: opts.out,
          ...(opts.bundle ? { bundle: opts.bundle } : {}),
          yes: opts.yes === true,
          ...(process.stdin.isTTY ? { confirm: askYes } : {}),
          progress: process.stderr.isTTY === true,
        });
      } catch (err) {
        if (err instanceof FlashError || err instanceof ConfigError || err instanceof PartitionTableError || err instanceof TargetRefused) {
          process.stderr.write(`geomirror flash: ${err.message}\n`);
          process.exit(1);
        }
        throw err;
      }
    });
}
