// The cache journal's bytes on the cache device (hal/cache.ts is the journal, hal/cache-replay.ts
// reads it back after a restart). All integers big-endian.
//
// Region layout:
//   [0, 512)        superblock copy 0     two copies written alternately, each with a sequence
//   [512, 1024)     superblock copy 1     number and crc: a torn superblock write leaves the
//                                          other copy, which names an older (still safe) head
//   [4096, size)    the ring of entries, each 64-byte aligned, never split across the end: an
//                   entry that does not fit before the end goes to the ring start instead
//
// Entry, version 2 (written since issue 16): a 128-byte header, then the payload, then zeros up
// to the next multiple of 64 bytes.
//     0  magic u32 "GMCE"        4 flags u16           6 version u8 (2)    7 link u8 (bit 0)
//     8  journalId u32          12 generation u32     16 jseq u64
//    24  volume u32             28 payloadBytes u32   32 epoch u64        40 seq u64
//    48  offsetBytes u64        56 payloadCrc u32     60 prevPayloadBytes u32
//    64  committedJseq u64      72 prevEpoch u64      80 prevSeq u64      88 prevOffsetBytes u64
//    96  prevPosBytes u64      104 reserved (20 bytes, zero)             124 headerCrc u32
//   - committedJseq (the watermark): every entry of this journal with a lower jseq had completed
//     (its append had resolved, so its caller may have acknowledged it) when this entry was
//     written. An unreadable entry below a later intact entry's watermark is damage in the
//     middle, not a torn tail: it had completed once (claim 12: the write was acknowledged).
//   - prev* (valid when link bit 0 is set): the identity and position of the entry with jseq - 1,
//     so the entry after a damaged one names the damaged one's range (epoch, seq, offset, length)
//     even when the damaged one's own header is unreadable; prevPosBytes 0 = position unknown.
//   - headerCrc covers bytes [0, 124).
//   Cost against version 1's 64-byte header: 64 bytes more per entry, not more than that, since
//   both sizes are multiples of the 64-byte alignment (a 4 KiB payload took 4160 bytes in the
//   ring and takes 4224 now: 1.5%; a 1 MiB payload 0.006%). The group commit still writes one
//   writev per burst. Encoding the header with its crc measured (bench/hal.ts, this machine under
//   load from other work) 0.9-1.1 us for version 1 and 1.4-2.7 us for version 2: about 1-2% of a
//   4 KiB append; cache-append throughput in three alternating bench:hal runs showed no
//   difference beyond the noise (4 KiB: 0.70-0.84x fs.write before, 0.77-0.91x after).
//
// Entry, version 1 (written before issue 16; still read, never written): a 64-byte header with
// the same fields at offsets 0-59 (byte 7 reserved), headerCrc u32 at 60 over bytes [0, 60), no
// watermark and no link. A journal written by an earlier install replays as it did then: its
// entries carry no watermark, so damage to them cannot be told from a torn tail.
//
// Superblock (same layout, version 1; older code ignores the words it now uses): its last two
// reserved words carry the watermark as of that superblock write (0 before issue 16: unknown),
// and bit 0 of its reserved u16 (now `flags`) says the journal was closed with nothing pending
// (every open rewrites the superblock without it): such a journal may change size at once.
//
// Checksum: CRC-32 (IEEE) from @node-rs/crc32. Measured on this project's machine (64 B / 4 KiB /
// 1 MiB): @node-rs crc32 110 ns / 0.42 us / 84 us, crc32c 125 ns / 0.83 us / 167 us, zlib.crc32
// 179 ns / 1.0 us / 202 us. Same 32-bit strength, half the cost of crc32c on the 1 MiB hot path.
//
// Header encoding: by hand (writeUInt32BE and friends). The buffer-layout structs below are the
// documented layout and a test checks both encode the same bytes. Measured per header with its
// crc (npm run bench:hal, loaded machine): by hand ~1.0 us, via buffer-layout ~1.9 us; a cost on
// every append, and buffer-layout cannot carry a u64 bigint (epoch, seq) without splitting it.
//
// hal/ imports nothing from src/.

import { crc32 } from '@node-rs/crc32';
import * as BufferLayout from 'buffer-layout';
import { readU64BE, writeU64BE } from './u64.js';

/** Header of the entries this version writes (format version 2). */
export const entryHeaderBytes = 128;
/** Header of format version 1 entries (read, never written). */
export const entryHeaderBytesV1 = 64;
export const entryAlignBytes = 64;
export const superblockBytes = 64;
export const superblockSlotBytes = 512;
export const ringStartBytes = 4096;
/** Largest payload of one entry, in bytes (the header's length field is a u32). */
export const entryPayloadBytesMax = 0xffff_ffff;

export const entryMagic = 0x474d4345; // "GMCE"
export const superblockMagic = 0x474d4353; // "GMCS"
/** The entry format this version writes. */
export const entryFormatVersion = 2;
/** The superblock format (its layout did not change with entry version 2). */
export const superblockFormatVersion = 1;
/** link bit 0: the prev* fields name the entry before this one. */
const linkPrevKnown = 1;

/** Entry flags (u16). */
export const CacheEntryFlags = {
  /** The host asked for Force Unit Access on this write. */
  FUA: 1 << 0,
  /** The entry stays after local execution until its owner drops it (relay/primary: on ack). */
  RETAIN: 1 << 1,
} as const;

/**
 * Documented entry-header layout, version 2 (the encoder below writes the same bytes by hand; a
 * test checks it). u64 fields are split hi/lo because buffer-layout decodes u64 to a lossy number.
 */
export const entryHeaderLayout = BufferLayout.struct([
  BufferLayout.u32be('magic'),
  BufferLayout.u16be('flags'),
  BufferLayout.u8('version'),
  BufferLayout.u8('link'),
  BufferLayout.u32be('journalId'),
  BufferLayout.u32be('generation'),
  BufferLayout.u32be('jseqHi'),
  BufferLayout.u32be('jseqLo'),
  BufferLayout.u32be('volume'),
  BufferLayout.u32be('payloadBytes'),
  BufferLayout.u32be('epochHi'),
  BufferLayout.u32be('epochLo'),
  BufferLayout.u32be('seqHi'),
  BufferLayout.u32be('seqLo'),
  BufferLayout.u32be('offsetBytesHi'),
  BufferLayout.u32be('offsetBytesLo'),
  BufferLayout.u32be('payloadCrc'),
  BufferLayout.u32be('prevPayloadBytes'),
  BufferLayout.u32be('committedJseqHi'),
  BufferLayout.u32be('committedJseqLo'),
  BufferLayout.u32be('prevEpochHi'),
  BufferLayout.u32be('prevEpochLo'),
  BufferLayout.u32be('prevSeqHi'),
  BufferLayout.u32be('prevSeqLo'),
  BufferLayout.u32be('prevOffsetBytesHi'),
  BufferLayout.u32be('prevOffsetBytesLo'),
  BufferLayout.u32be('prevPosBytesHi'),
  BufferLayout.u32be('prevPosBytesLo'),
  BufferLayout.u32be('reserved0'),
  BufferLayout.u32be('reserved1'),
  BufferLayout.u32be('reserved2'),
  BufferLayout.u32be('reserved3'),
  BufferLayout.u32be('reserved4'),
  BufferLayout.u32be('headerCrc'), // CRC-32 of bytes [0, 124)
]);

/** Documented entry-header layout of format version 1 (64 bytes; read, never written). */
export const entryHeaderLayoutV1 = BufferLayout.struct([
  BufferLayout.u32be('magic'),
  BufferLayout.u16be('flags'),
  BufferLayout.u8('version'),
  BufferLayout.u8('reserved'),
  BufferLayout.u32be('journalId'),
  BufferLayout.u32be('generation'),
  BufferLayout.u32be('jseqHi'),
  BufferLayout.u32be('jseqLo'),
  BufferLayout.u32be('volume'),
  BufferLayout.u32be('payloadBytes'),
  BufferLayout.u32be('epochHi'),
  BufferLayout.u32be('epochLo'),
  BufferLayout.u32be('seqHi'),
  BufferLayout.u32be('seqLo'),
  BufferLayout.u32be('offsetBytesHi'),
  BufferLayout.u32be('offsetBytesLo'),
  BufferLayout.u32be('payloadCrc'),
  BufferLayout.u32be('headerCrc'), // CRC-32 of bytes [0, 60)
]);

/** Documented superblock layout (hand-encoded below; a test checks they agree). */
export const superblockLayout = BufferLayout.struct([
  BufferLayout.u32be('magic'),
  BufferLayout.u16be('version'),
  BufferLayout.u16be('flags'), // bit 0: closed with nothing pending (reserved, 0, before issue 16)
  BufferLayout.u32be('sbSeqHi'),
  BufferLayout.u32be('sbSeqLo'),
  BufferLayout.u32be('regionBytesHi'),
  BufferLayout.u32be('regionBytesLo'),
  BufferLayout.u32be('journalId'),
  BufferLayout.u32be('generation'),
  BufferLayout.u32be('headPosHi'),
  BufferLayout.u32be('headPosLo'),
  BufferLayout.u32be('headJseqHi'),
  BufferLayout.u32be('headJseqLo'),
  BufferLayout.u32be('headGeneration'),
  BufferLayout.u32be('committedJseqHi'), // reserved (0) before issue 16
  BufferLayout.u32be('committedJseqLo'),
  BufferLayout.u32be('crc'), // CRC-32 of bytes [0, 60)
]);

/** What an entry header says about its own write (an EntryHandle has these fields). */
export interface EntryFields {
  readonly jseq: number;
  readonly volume: number;
  readonly epoch: bigint;
  readonly seq: bigint;
  readonly offsetBytes: number;
  readonly flags: number;
  readonly payloadBytes: number;
  readonly generation: number;
}

/** The entry before another one (jseq - 1), as that one's header names it. */
export interface PrevEntry {
  readonly epoch: bigint;
  readonly seq: bigint;
  readonly offsetBytes: number;
  readonly payloadBytes: number;
  /** Where it starts in the ring; 0 = unknown. */
  readonly posBytes: number;
}

/** The version-2 fields that tie an entry to the ones before it. */
export interface EntryLink {
  /** Every entry with a lower jseq had completed when this one was written. */
  readonly committedJseq: number;
  readonly prev: PrevEntry | undefined;
}

/** A decoded entry header (version 1 or 2) whose own checksum is right. */
export interface EntryHeader extends EntryFields, EntryLink {
  readonly version: 1 | 2;
  readonly headerBytes: number;
  readonly journalId: number;
  readonly payloadCrc: number;
  /** Header, payload and alignment padding: the entry's extent in the ring. */
  readonly sizeBytes: number;
}

export interface Head {
  readonly pos: number;
  readonly jseq: number;
  readonly generation: number;
}

export interface Superblock extends Head {
  readonly sbSeq: number;
  readonly regionBytes: number;
  readonly journalId: number;
  readonly currentGeneration: number;
  /** The watermark when this superblock was written (0: unknown). */
  readonly committedJseq: number;
  /** Written by close() with nothing pending, and nothing happened since. */
  readonly drained: boolean;
}

/** Superblock flags bit 0: closed with nothing pending. */
const superblockDrained = 1;

export function alignUp(n: number): number {
  return Math.ceil(n / entryAlignBytes) * entryAlignBytes;
}

function writeU64(buf: Buffer, value: number, at: number): void {
  buf.writeUInt32BE(Math.floor(value / 2 ** 32), at);
  buf.writeUInt32BE(value >>> 0, at + 4);
}

function readU64(buf: Buffer, at: number): number {
  return buf.readUInt32BE(at) * 2 ** 32 + buf.readUInt32BE(at + 4);
}

/** Writes a version-2 header (entryHeaderBytes) for entry `h` into `buf`. */
export function encodeEntryHeader(buf: Buffer, journalId: number, h: EntryFields, payloadCrc: number, link: EntryLink): void {
  buf.writeUInt32BE(entryMagic, 0);
  buf.writeUInt16BE(h.flags, 4);
  buf.writeUInt8(entryFormatVersion, 6);
  buf.writeUInt8(link.prev === undefined ? 0 : linkPrevKnown, 7);
  buf.writeUInt32BE(journalId, 8);
  buf.writeUInt32BE(h.generation, 12);
  writeU64(buf, h.jseq, 16);
  buf.writeUInt32BE(h.volume, 24);
  buf.writeUInt32BE(h.payloadBytes, 28);
  writeU64BE(buf, h.epoch, 32);
  writeU64BE(buf, h.seq, 40);
  writeU64(buf, h.offsetBytes, 48);
  buf.writeUInt32BE(payloadCrc, 56);
  const p = link.prev;
  buf.writeUInt32BE(p?.payloadBytes ?? 0, 60);
  writeU64(buf, link.committedJseq, 64);
  writeU64BE(buf, p?.epoch ?? 0n, 72);
  writeU64BE(buf, p?.seq ?? 0n, 80);
  writeU64(buf, p?.offsetBytes ?? 0, 88);
  writeU64(buf, p?.posBytes ?? 0, 96);
  buf.fill(0, 104, 124);
  buf.writeUInt32BE(crc32(buf.subarray(0, 124)), 124);
}

/**
 * Decodes the entry header at the start of `buf` (64 bytes for version 1, 128 for version 2),
 * or undefined when the magic, the version or the header checksum is wrong.
 */
export function decodeEntryHeader(buf: Buffer): EntryHeader | undefined {
  if (buf.byteLength < entryHeaderBytesV1 || buf.readUInt32BE(0) !== entryMagic) return undefined;
  const version = buf.readUInt8(6);
  let link: EntryLink;
  let headerBytes: number;
  if (version === 1) {
    if (crc32(buf.subarray(0, 60)) !== buf.readUInt32BE(60)) return undefined;
    headerBytes = entryHeaderBytesV1;
    link = { committedJseq: 0, prev: undefined };
  } else if (version === 2) {
    if (buf.byteLength < entryHeaderBytes || crc32(buf.subarray(0, 124)) !== buf.readUInt32BE(124)) return undefined;
    headerBytes = entryHeaderBytes;
    const prev: PrevEntry | undefined =
      (buf.readUInt8(7) & linkPrevKnown) === 0
        ? undefined
        : { epoch: readU64BE(buf, 72), seq: readU64BE(buf, 80), offsetBytes: readU64(buf, 88), payloadBytes: buf.readUInt32BE(60), posBytes: readU64(buf, 96) };
    link = { committedJseq: readU64(buf, 64), prev };
  } else {
    return undefined;
  }
  const payloadBytes = buf.readUInt32BE(28);
  return {
    version,
    headerBytes,
    flags: buf.readUInt16BE(4),
    journalId: buf.readUInt32BE(8),
    generation: buf.readUInt32BE(12),
    jseq: readU64(buf, 16),
    volume: buf.readUInt32BE(24),
    payloadBytes,
    epoch: readU64BE(buf, 32),
    seq: readU64BE(buf, 40),
    offsetBytes: readU64(buf, 48),
    payloadCrc: buf.readUInt32BE(56),
    sizeBytes: alignUp(headerBytes + payloadBytes),
    ...link,
  };
}

export function encodeSuperblock(buf: Buffer, sb: Superblock): void {
  buf.writeUInt32BE(superblockMagic, 0);
  buf.writeUInt16BE(superblockFormatVersion, 4);
  buf.writeUInt16BE(sb.drained ? superblockDrained : 0, 6);
  writeU64(buf, sb.sbSeq, 8);
  writeU64(buf, sb.regionBytes, 16);
  buf.writeUInt32BE(sb.journalId, 24);
  buf.writeUInt32BE(sb.currentGeneration, 28);
  writeU64(buf, sb.pos, 32);
  writeU64(buf, sb.jseq, 40);
  buf.writeUInt32BE(sb.generation, 48);
  writeU64(buf, sb.committedJseq, 52);
  buf.writeUInt32BE(crc32(buf.subarray(0, 60)), 60);
}

export function decodeSuperblock(buf: Buffer): Superblock | undefined {
  if (buf.readUInt32BE(0) !== superblockMagic || buf.readUInt16BE(4) !== superblockFormatVersion) return undefined;
  if (crc32(buf.subarray(0, 60)) !== buf.readUInt32BE(60)) return undefined;
  return {
    sbSeq: readU64(buf, 8),
    regionBytes: readU64(buf, 16),
    journalId: buf.readUInt32BE(24),
    currentGeneration: buf.readUInt32BE(28),
    pos: readU64(buf, 32),
    jseq: readU64(buf, 40),
    generation: buf.readUInt32BE(48),
    committedJseq: readU64(buf, 52),
    drained: (buf.readUInt16BE(6) & superblockDrained) !== 0,
  };
}
