// SCSI command blocks and response parsing for a USB disk (SPC-4, SBC-3): the commands a
// Bulk-Only mass-storage device must answer, declared with buffer-layout so each byte has a
// name. Shared by the host adapter (device.ts) and the device simulator (sim/target.ts).

import * as BufferLayout from 'buffer-layout';

export const ScsiOp = {
  TEST_UNIT_READY: 0x00,
  REQUEST_SENSE: 0x03,
  INQUIRY: 0x12,
  MODE_SENSE_6: 0x1a,
  READ_CAPACITY_10: 0x25,
  READ_10: 0x28,
  WRITE_10: 0x2a,
  SYNCHRONIZE_CACHE_10: 0x35,
  READ_16: 0x88,
  WRITE_16: 0x8a,
  SERVICE_ACTION_IN_16: 0x9e,
} as const;
export const serviceActionReadCapacity16 = 0x10;
/** READ/WRITE (10/16) byte 1 bit 3: Force Unit Access. */
export const fuaBit = 0x08;
/** MODE SENSE device-specific parameter bit 7: medium is write-protected (SBC-3 6.4.1). */
export const modeWriteProtectBit = 0x80;
export const modePageAll = 0x3f;

export const inquiryBytes = 36;
export const senseBytes = 18;
export const modeSenseBytes = 192;
export const readCapacity10Bytes = 8;
export const readCapacity16Bytes = 32;
/** READ CAPACITY (10) reports this when the last LBA does not fit 32 bits: use (16). */
export const lba32Max = 0xffffffff;
/** READ/WRITE (10) carry a 16-bit block count. */
export const blocks10Max = 0xffff;

const { struct, u8, u16be, u32be, nu64be, blob } = BufferLayout;

interface Cdb6 { op: number; b1: number; b2: number; b3: number; allocationLength: number; control: number }
const cdb6 = struct<Cdb6>([u8('op'), u8('b1'), u8('b2'), u8('b3'), u8('allocationLength'), u8('control')]);
interface Inquiry6 { op: number; evpd: number; page: number; allocationLength: number; control: number }
const inquiryCdb = struct<Inquiry6>([u8('op'), u8('evpd'), u8('page'), u16be('allocationLength'), u8('control')]);
interface Rw10 { op: number; flags: number; lba: number; group: number; blocks: number; control: number }
export const rw10Cdb = struct<Rw10>([u8('op'), u8('flags'), u32be('lba'), u8('group'), u16be('blocks'), u8('control')]);
interface Rw16 { op: number; flags: number; lba: number; blocks: number; group: number; control: number }
// nu64be: LBAs here are safe integers (checkRange), which the 64-bit float field keeps exact.
export const rw16Cdb = struct<Rw16>([u8('op'), u8('flags'), nu64be('lba'), u32be('blocks'), u8('group'), u8('control')]);
interface Cap16 { op: number; serviceAction: number; lba: number; allocationLength: number; pmi: number; control: number }
const readCapacity16Cdb = struct<Cap16>([u8('op'), u8('serviceAction'), nu64be('lba'), u32be('allocationLength'), u8('pmi'), u8('control')]);
interface Cap10 { op: number; b1: number; lba: number; b6: number; b7: number; pmi: number; control: number }
const readCapacity10Cdb = struct<Cap10>([u8('op'), u8('b1'), u32be('lba'), u8('b6'), u8('b7'), u8('pmi'), u8('control')]);

export interface InquiryData {
  peripheral: number;
  rmb: number;
  version: number;
  responseFormat: number;
  additionalLength: number;
  flags5: number;
  flags6: number;
  flags7: number;
  vendor: Buffer;
  product: Buffer;
  revision: Buffer;
}
export const inquiryLayout = struct<InquiryData>([
  u8('peripheral'), u8('rmb'), u8('version'), u8('responseFormat'), u8('additionalLength'),
  u8('flags5'), u8('flags6'), u8('flags7'), blob(8, 'vendor'), blob(16, 'product'), blob(4, 'revision'),
]);

export interface FixedSense {
  responseCode: number;
  obsolete: number;
  flagsKey: number;
  information: number;
  additionalLength: number;
  commandInformation: number;
  asc: number;
  ascq: number;
  fru: number;
  sks: Buffer;
}
/** Fixed-format sense data (SPC-4 4.5.3), 18 bytes. */
export const fixedSenseLayout = struct<FixedSense>([
  u8('responseCode'), u8('obsolete'), u8('flagsKey'), u32be('information'), u8('additionalLength'),
  u32be('commandInformation'), u8('asc'), u8('ascq'), u8('fru'), blob(3, 'sks'),
]);

export interface ModeHeader6 { modeDataLength: number; mediumType: number; deviceSpecific: number; blockDescriptorLength: number }
export const modeHeader6Layout = struct<ModeHeader6>([u8('modeDataLength'), u8('mediumType'), u8('deviceSpecific'), u8('blockDescriptorLength')]);
export const capacity10Layout = struct<{ lastLba: number; blockLength: number }>([u32be('lastLba'), u32be('blockLength')]);

function enc<T>(layout: BufferLayout.Layout<T>, v: T): Buffer {
  const b = Buffer.alloc(layout.span);
  layout.encode(v, b, 0);
  return b;
}

export const cdb = {
  testUnitReady: () => enc(cdb6, { op: ScsiOp.TEST_UNIT_READY, b1: 0, b2: 0, b3: 0, allocationLength: 0, control: 0 }),
  requestSense: () => enc(cdb6, { op: ScsiOp.REQUEST_SENSE, b1: 0, b2: 0, b3: 0, allocationLength: senseBytes, control: 0 }),
  inquiry: () => enc(inquiryCdb, { op: ScsiOp.INQUIRY, evpd: 0, page: 0, allocationLength: inquiryBytes, control: 0 }),
  modeSense6: () => enc(cdb6, { op: ScsiOp.MODE_SENSE_6, b1: 0x08 /* DBD */, b2: modePageAll, b3: 0, allocationLength: modeSenseBytes, control: 0 }),
  readCapacity10: () => enc(readCapacity10Cdb, { op: ScsiOp.READ_CAPACITY_10, b1: 0, lba: 0, b6: 0, b7: 0, pmi: 0, control: 0 }),
  readCapacity16: () =>
    enc(readCapacity16Cdb, { op: ScsiOp.SERVICE_ACTION_IN_16, serviceAction: serviceActionReadCapacity16, lba: 0, allocationLength: readCapacity16Bytes, pmi: 0, control: 0 }),
  synchronizeCache10: () => enc(rw10Cdb, { op: ScsiOp.SYNCHRONIZE_CACHE_10, flags: 0, lba: 0, group: 0, blocks: 0, control: 0 }),
  /** READ/WRITE (10) when LBA and count fit, else (16). */
  readWrite: (write: boolean, lba: number, blocks: number, fua: boolean): Buffer => {
    const flags = fua ? fuaBit : 0;
    if (lba + blocks - 1 <= lba32Max && blocks <= blocks10Max) {
      return enc(rw10Cdb, { op: write ? ScsiOp.WRITE_10 : ScsiOp.READ_10, flags, lba, group: 0, blocks, control: 0 });
    }
    return enc(rw16Cdb, { op: write ? ScsiOp.WRITE_16 : ScsiOp.READ_16, flags, lba, blocks, group: 0, control: 0 });
  },
};

/** Decoded READ/WRITE (10/16) CDB (device side). */
export function decodeReadWrite(cb: Buffer): { write: boolean; lba: number; blocks: number; fua: boolean } | undefined {
  const op = cb[0];
  if ((op === ScsiOp.READ_10 || op === ScsiOp.WRITE_10) && cb.length >= 10) {
    const c = rw10Cdb.decode(cb, 0);
    return { write: op === ScsiOp.WRITE_10, lba: c.lba, blocks: c.blocks, fua: (c.flags & fuaBit) !== 0 };
  }
  if ((op === ScsiOp.READ_16 || op === ScsiOp.WRITE_16) && cb.length >= 16) {
    const lba = cb.readBigUInt64BE(2);
    if (lba > BigInt(Number.MAX_SAFE_INTEGER)) return undefined;
    return { write: op === ScsiOp.WRITE_16, lba: Number(lba), blocks: cb.readUInt32BE(10), fua: (cb[1]! & fuaBit) !== 0 };
  }
  return undefined;
}

export interface Sense {
  key: number;
  asc: number;
  ascq: number;
  /** INFORMATION field when valid (fixed format: the failing LBA for medium errors). */
  information?: number;
}

/** Parses fixed (0x70/0x71) or descriptor (0x72/0x73) sense data; undefined if it is neither. */
export function parseSense(b: Buffer): Sense | undefined {
  if (b.length < 8) return undefined;
  const code = b[0]! & 0x7f;
  if (code === 0x70 || code === 0x71) {
    const padded = b.length >= senseBytes ? b : Buffer.concat([b, Buffer.alloc(senseBytes - b.length)]);
    const s = fixedSenseLayout.decode(padded, 0);
    const valid = (b[0]! & 0x80) !== 0;
    return { key: s.flagsKey & 0x0f, asc: s.asc, ascq: s.ascq, ...(valid ? { information: s.information } : {}) };
  }
  if (code === 0x72 || code === 0x73) return { key: b[1]! & 0x0f, asc: b[2]!, ascq: b[3]! };
  return undefined;
}

export function encodeFixedSense(s: Sense): Buffer {
  const valid = s.information !== undefined;
  return enc(fixedSenseLayout, {
    responseCode: 0x70 | (valid ? 0x80 : 0), obsolete: 0, flagsKey: s.key & 0x0f, information: valid ? s.information! >>> 0 : 0,
    additionalLength: senseBytes - 8, commandInformation: 0, asc: s.asc, ascq: s.ascq, fru: 0, sks: Buffer.alloc(3),
  });
}

/** READ CAPACITY (16) response: last LBA read as a BigInt (buffer-layout's 64-bit fields round). */
export function parseCapacity16(b: Buffer): { lastLba: bigint; blockLength: number } | undefined {
  if (b.length < 12) return undefined;
  return { lastLba: b.readBigUInt64BE(0), blockLength: b.readUInt32BE(8) };
}

export function encodeCapacity16(lastLba: number, blockLength: number): Buffer {
  const b = Buffer.alloc(readCapacity16Bytes);
  b.writeBigUInt64BE(BigInt(lastLba), 0);
  b.writeUInt32BE(blockLength, 8);
  return b;
}

export function inquiryText(d: InquiryData): { vendor: string; product: string; revision: string } {
  const t = (x: Buffer) => x.toString('latin1').replace(/\0/g, '').trim();
  return { vendor: t(d.vendor), product: t(d.product), revision: t(d.revision) };
}

export { enc as encodeLayout };
