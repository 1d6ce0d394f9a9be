// The MBR partition table of a Raspberry Pi OS image (partition 1: FAT32 boot, partition 2:
// ext4 root) and the FAT boot sector of the boot partition. `geomirror flash` reads both from
// the IMAGE before it touches the target, so an image it cannot provision is refused with the
// target untouched, and again from the target after writing, to find where the files go.

/** Bytes of one MBR sector; MBR partition LBAs are always in 512-byte units. */
export const mbrSectorBytes = 512;
const partitionTableOffset = 446;
const partitionEntryBytes = 16;
const partitionEntryCount = 4;

/** MBR partition type ids of FAT filesystems (Pi OS uses 0x0c, FAT32 with LBA). */
export const fatPartitionTypes: Readonly<Record<number, string>> = {
  0x01: 'FAT12',
  0x04: 'FAT16 <32M',
  0x06: 'FAT16',
  0x0b: 'FAT32 (CHS)',
  0x0c: 'FAT32 (LBA)',
  0x0e: 'FAT16 (LBA)',
};

export interface MbrPartition {
  /** 1-based, as Linux names them (sda1, mmcblk0p1). */
  index: number;
  type: number;
  bootable: boolean;
  firstLba: number;
  sectorCount: number;
  offsetBytes: number;
  sizeBytes: number;
}

export class PartitionTableError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'PartitionTableError';
  }
}

const hex2 = (n: number): string => `0x${n.toString(16).padStart(2, '0')}`;

/** The non-empty primary partitions of an MBR sector; `what` names the image in messages. */
export function parseMbr(sector: Buffer, what: string): MbrPartition[] {
  if (sector.length < mbrSectorBytes) {
    throw new PartitionTableError(`${what}: only ${sector.length} bytes, too short for an MBR partition table (${mbrSectorBytes} bytes); is it a disk image?`);
  }
  if (sector[510] !== 0x55 || sector[511] !== 0xaa) {
    throw new PartitionTableError(`${what}: no MBR partition table (sector 0 does not end in 55 AA); expected a Raspberry Pi OS image (.img or .img.xz)`);
  }
  const parts: MbrPartition[] = [];
  for (let i = 0; i < partitionEntryCount; i++) {
    const e = partitionTableOffset + i * partitionEntryBytes;
    const type = sector[e + 4]!;
    const firstLba = sector.readUInt32LE(e + 8);
    const sectorCount = sector.readUInt32LE(e + 12);
    if (type === 0 || sectorCount === 0) continue;
    if (type === 0xee) throw new PartitionTableError(`${what}: has a GPT protective MBR; Raspberry Pi OS images use a plain MBR table, so this is not one`);
    parts.push({
      index: i + 1,
      type,
      bootable: sector[e] === 0x80,
      firstLba,
      sectorCount,
      offsetBytes: firstLba * mbrSectorBytes,
      sizeBytes: sectorCount * mbrSectorBytes,
    });
  }
  return parts;
}

/** The first FAT partition of the table (the Pi's boot partition), or a refusal naming what was found. */
export function findBootPartition(parts: MbrPartition[], what: string): MbrPartition {
  const fat = parts.find((p) => fatPartitionTypes[p.type] !== undefined);
  if (fat) return fat;
  const found = parts.length === 0 ? 'no partitions' : parts.map((p) => `partition ${p.index} type ${hex2(p.type)}`).join(', ');
  throw new PartitionTableError(
    `${what}: no FAT boot partition in the MBR partition table (found ${found}); a Raspberry Pi OS image has a FAT32 partition 1 (type 0x0c) holding config.txt`,
  );
}

/** Checks the boot sector at the start of the FAT partition, so mtools is never pointed at garbage. */
export function checkFatBootSector(sector: Buffer, part: MbrPartition, what: string): void {
  const where = `${what}: partition ${part.index} at byte ${part.offsetBytes}`;
  if (sector.length < mbrSectorBytes || sector[510] !== 0x55 || sector[511] !== 0xaa) {
    throw new PartitionTableError(`${where} is typed FAT in the partition table but holds no FAT boot sector (no 55 AA signature); the image is damaged or not formatted`);
  }
  const bytesPerSector = sector.readUInt16LE(11);
  const fat32Label = sector.toString('latin1', 82, 87);
  const fat16Label = sector.toString('latin1', 54, 57);
  if (![512, 1024, 2048, 4096].includes(bytesPerSector) || (fat32Label !== 'FAT32' && fat16Label !== 'FAT')) {
    throw new PartitionTableError(`${where} is typed FAT in the partition table but its boot sector is not a FAT boot sector (bytes per sector ${bytesPerSector}); the image is damaged`);
  }
}
