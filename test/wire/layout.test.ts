// The hand-coded hot paths (header, WRITE and RESYNC_DATA fixed fields) equal the buffer-layout
// definitions, byte for byte, for arbitrary field values; the CRC implementations agree.
import { crc32 as zlibCrc32 } from 'node:zlib';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  crc32,
  crc32Small,
  decodeMessage,
  encodeFrameParts,
  headerStruct,
  protocolVersion,
  specByName,
  writeHeader,
  type Message,
} from '../../src/wire/index.js';

const u64 = fc.bigInt({ min: 0n, max: 0xffff_ffff_ffff_ffffn });
const u32 = fc.integer({ min: 0, max: 0xffffffff });

describe('hand-coded header == buffer-layout header struct', () => {
  it('for arbitrary type, length, seq and body CRC', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 255 }), u32, u32, u32, (type, bodyBytes, seq, bodyCrc) => {
      const hand = Buffer.alloc(24);
      writeHeader(hand, 0, type, bodyBytes, seq, bodyCrc);
      const bl = Buffer.alloc(24);
      headerStruct.layout.encode({ magic: 0x474d5250, version: protocolVersion, type, flags: 0, bodyBytes, frameSeq: seq, bodyCrc, headerCrc: 0 }, bl, 0);
      bl.writeUInt32BE(crc32Small(bl, 0, 20), 20);
      expect(hand.toString('hex')).toBe(bl.toString('hex'));
      expect(headerStruct.layout.decode(hand, 0)).toMatchObject({ type, bodyBytes, frameSeq: seq, bodyCrc });
    }));
  });
});

describe('hand-coded WRITE / RESYNC_DATA == buffer-layout fixed structs', () => {
  it('encode and decode agree for arbitrary fields', () => {
    fc.assert(fc.property(
      fc.boolean(), u32, fc.integer({ min: 0, max: 1 }), u64, u64, u64, fc.uint8Array({ maxLength: 300 }),
      (isWrite, volumeId, flags, epoch, seq, offsetBytes, bytes) => {
        const data = Buffer.from(bytes);
        const msg: Message = isWrite
          ? { type: 'WRITE', volumeId, flags, epoch, seq, offsetBytes, data }
          : { type: 'RESYNC_DATA', volumeId, flags, epoch, resyncId: seq, offsetBytes, data };
        const spec = specByName.get(msg.type)!;
        const [head] = encodeFrameParts(msg, 0);
        const fixed = head!.subarray(24);
        const bl = Buffer.alloc(spec.fixed.spanBytes);
        spec.fixed.layout.encode({ ...msg, lengthBytes: data.length, reserved: 0, reserved2: 0 }, bl, 0);
        expect(fixed.toString('hex')).toBe(bl.toString('hex'));
        const body = Buffer.concat([fixed, data]);
        const hot = decodeMessage({ type: spec.code, flags: 0, frameSeq: 0, body }) as unknown as Record<string, unknown>;
        const viaLayout = spec.fixed.layout.decode(body, 0);
        for (const f of spec.fixed.fields) {
          if (f.name.startsWith('reserved')) continue;
          if (f.name === 'lengthBytes') expect(viaLayout.lengthBytes).toBe((hot.data as Buffer).length);
          else expect(hot[f.name]).toBe(viaLayout[f.name]);
        }
      },
    ));
  });
});

describe('CRC-32', () => {
  it('the JS table, @node-rs/crc32 and zlib.crc32 agree, including continuation', () => {
    fc.assert(fc.property(fc.uint8Array({ maxLength: 2000 }), fc.uint8Array({ maxLength: 2000 }), (a, b) => {
      const A = Buffer.from(a);
      const B = Buffer.from(b);
      const whole = zlibCrc32(Buffer.concat([A, B])) >>> 0;
      expect(crc32Small(Buffer.concat([A, B]))).toBe(whole);
      expect(crc32(Buffer.concat([A, B]))).toBe(whole);
      expect(crc32(B, crc32(A))).toBe(whole);
    }));
    expect(crc32Small(Buffer.from('123456789'))).toBe(0xcbf43926);
  });
});

describe('hand-coded ACK / WRITE_ACK == buffer-layout fixed structs', () => {
  it('encode and decode agree for arbitrary fields', () => {
    const byte = fc.integer({ min: 0, max: 255 });
    fc.assert(fc.property(fc.boolean(), u32, fc.integer({ min: 0, max: 2 }), byte, byte, byte, u64, u64, u32, (cumulative, volumeId, status, senseKey, asc, ascq, epoch, seq, frameSeq) => {
      const msg: Message = cumulative
        ? { type: 'ACK', volumeId, epoch, seq }
        : { type: 'WRITE_ACK', volumeId, status, senseKey, asc, ascq, epoch, seq };
      const spec = specByName.get(msg.type)!;
      const parts = encodeFrameParts(msg, frameSeq);
      expect(parts.length).toBe(1);
      const body = Buffer.alloc(spec.fixed.spanBytes);
      spec.fixed.layout.encode({ reserved: 0, ...msg }, body, 0);
      const header = Buffer.alloc(24);
      writeHeader(header, 0, spec.code, body.length, frameSeq, crc32(body));
      expect(parts[0]!.toString('hex')).toBe(Buffer.concat([header, body]).toString('hex'));
      const back = decodeMessage({ type: spec.code, flags: 0, frameSeq, body }) as unknown as Record<string, unknown>;
      expect(back).toEqual(msg);
      const viaLayout = spec.fixed.layout.decode(body, 0);
      for (const f of spec.fixed.fields) if (!f.name.startsWith('reserved')) expect(back[f.name]).toBe(viaLayout[f.name]);
    }));
  });
});
