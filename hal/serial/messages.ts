// Message layouts of the serial block protocol (docs/SERIAL-PROTOCOL.md section 4). Shared by
// the host (protocol.ts, device.ts) and the device side (sim/target.ts), so both ends agree by
// construction and a firmware author has one table to copy.
//
// Fixed headers are declared with buffer-layout (control structs, not payloads: payloads are
// appended and sliced as views). LBAs ride in a 64-bit field decoded as a JS number, which is
// exact for every LBA we accept (checkRange keeps them safe integers).

import * as BufferLayout from 'buffer-layout';

export const protocolVersion = 1;

export const Op = {
  INFO: 0x01,
  READ: 0x02,
  WRITE: 0x03,
  FLUSH: 0x04,
} as const;
export type Op = (typeof Op)[keyof typeof Op];
export const responseBit = 0x80;

export const Flag = {
  /** WRITE: durable on stable storage before the response (Force Unit Access). */
  FUA: 0x01,
} as const;

export const Feature = {
  WRITE_PROTECTED: 0x01,
  /** The device has a volatile write cache; FLUSH empties it. */
  VOLATILE_CACHE: 0x02,
  FUA: 0x04,
} as const;

export interface Header {
  version: number;
  op: number;
  id: number;
  lba: number;
  blocks: number;
  /** Response only: SCSI sense key, 0 = GOOD. */
  status: number;
  asc: number;
  ascq: number;
  flags: number;
}

export const headerLayout = BufferLayout.struct<Header>([
  BufferLayout.u8('version'),
  BufferLayout.u8('op'),
  BufferLayout.u16be('id'),
  BufferLayout.nu64be('lba'),
  BufferLayout.u32be('blocks'),
  BufferLayout.u8('status'),
  BufferLayout.u8('asc'),
  BufferLayout.u8('ascq'),
  BufferLayout.u8('flags'),
]);
export const headerBytes = headerLayout.span; // 20

export interface Info {
  blockSizeBytes: number;
  blockCount: number;
  payloadBytesMax: number;
  features: number;
  model: string;
}

const modelBytes = 16;
const infoLayout = BufferLayout.struct<Omit<Info, 'model'>>([
  BufferLayout.u32be('blockSizeBytes'),
  BufferLayout.nu64be('blockCount'),
  BufferLayout.u32be('payloadBytesMax'),
  BufferLayout.u32be('features'),
]);
export const infoBytes = infoLayout.span + modelBytes; // 36

/** Protocol bound on one frame's payload, whatever a device advertises (1 MiB). */
export const payloadBytesLimit = 1 << 20;

export function encodeMessage(h: Omit<Header, 'version'>, payload?: Uint8Array): Buffer {
  const out = Buffer.alloc(headerBytes + (payload?.byteLength ?? 0));
  headerLayout.encode({ version: protocolVersion, ...h }, out, 0);
  if (payload) out.set(payload, headerBytes);
  return out;
}

/** Decodes a checked frame body; the payload is a view into `body`. */
export function decodeMessage(body: Buffer): { header: Header; payload: Buffer } | undefined {
  if (body.length < headerBytes) return undefined;
  const header = headerLayout.decode(body, 0);
  if (header.version !== protocolVersion) return undefined;
  return { header, payload: body.subarray(headerBytes) };
}

export function encodeInfo(info: Info): Buffer {
  const out = Buffer.alloc(infoBytes);
  infoLayout.encode(info, out, 0);
  out.write(info.model.slice(0, modelBytes), infoLayout.span, 'latin1');
  return out;
}

export function decodeInfo(p: Buffer): Info | undefined {
  if (p.length < infoBytes) return undefined;
  const fixed = infoLayout.decode(p, 0);
  const model = p.subarray(infoLayout.span, infoLayout.span + modelBytes).toString('latin1').replace(/\0+$/, '').trim();
  return { ...fixed, model };
}
