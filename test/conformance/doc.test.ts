// docs/PROTOCOL.md against the code and the vectors: its generated tables equal what the layout
// definitions render, and reading each vector's bytes by the doc's own tables (offsets, sizes,
// type codes, error codes parsed from the markdown) gives the vector's fields.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { generatedRegions, renderSections } from '../../src/wire/doc.js';
import { loadVectors } from './load.js';

const doc = readFileSync(fileURLToPath(new URL('../../docs/PROTOCOL.md', import.meta.url)), 'utf8');
const v = loadVectors();

interface Row { offset: number; bytes: number; field: string; type: string }

function tableRows(markdown: string): string[][] {
  return markdown
    .split('\n')
    .filter((l) => l.startsWith('|') && !l.startsWith('|---') && !/^\|\s*-/.test(l))
    .slice(1)
    .map((l) => l.slice(1, -1).split('|').map((c) => c.trim()));
}

function fieldRows(markdown: string): Row[] {
  return tableRows(markdown)
    .filter((c) => c[1] !== 'var')
    .map((c) => ({ offset: Number(c[0]), bytes: Number(c[1]), field: c[2]!, type: c[3]! }));
}

/** The per-message tables of the doc's "messages" region, by message name. */
function messageTables(): Map<string, Row[]> {
  const region = generatedRegions(doc).get('messages')!;
  const out = new Map<string, Row[]>();
  for (const part of region.split(/^### /m).slice(1)) {
    const name = part.slice(0, part.indexOf(' '));
    out.set(name, fieldRows(part));
  }
  return out;
}

function readField(b: Buffer, r: Row): unknown {
  switch (r.type) {
    case 'u8': return b.readUInt8(r.offset);
    case 'u16': return b.readUInt16BE(r.offset);
    case 'u32': return b.readUInt32BE(r.offset);
    case 'u64': return b.readBigUInt64BE(r.offset);
    case 'bytes32': return b.subarray(r.offset, r.offset + 32).toString('hex');
    default: throw new Error(`doc names unknown field type ${r.type}`);
  }
}

describe('docs/PROTOCOL.md', () => {
  it('has every generated region, each equal to the rendering of the layout definitions', () => {
    const regions = generatedRegions(doc);
    const rendered = renderSections();
    expect([...regions.keys()].sort()).toEqual([...rendered.keys()].sort());
    for (const [name, text] of rendered) expect(regions.get(name), `region ${name}: run test/conformance/gen.ts`).toBe(text);
  });

  it('reading each message vector by the doc tables gives the vector fields', () => {
    const header = fieldRows(generatedRegions(doc).get('header')!);
    const types = new Map(tableRows(generatedRegions(doc).get('types')!).map((c) => [c[1]!, Number(c[0])]));
    const tables = messageTables();
    for (const m of v.messages) {
      const h = Object.fromEntries(header.map((r) => [r.field, readField(m.bytes, r)]));
      expect(h.magic, m.name).toBe(0x474d5250);
      expect(h.version, m.name).toBe(2);
      expect(h.type, m.name).toBe(types.get(m.fields.type));
      expect(h.frameSeq, m.name).toBe(m.frameSeq);
      expect(h.bodyBytes, m.name).toBe(m.bytes.length - 24);
      const body = m.bytes.subarray(24);
      const rows = tables.get(m.fields.type)!;
      expect(rows.length, m.fields.type).toBeGreaterThan(0);
      const fields = m.fields as unknown as Record<string, unknown>;
      for (const r of rows) {
        const got = readField(body, r);
        if (r.field.startsWith('reserved')) expect(got, `${m.name}.${r.field}`).toBe(r.type === 'u64' ? 0n : 0);
        else if (r.field === 'lengthBytes' && fields.data !== undefined) expect(got, m.name).toBe((fields.data as Buffer).length);
        else if (r.type === 'bytes32') expect(got, `${m.name}.${r.field}`).toBe((fields[r.field] as Buffer).toString('hex'));
        else expect(got, `${m.name}.${r.field}`).toBe(fields[r.field]);
      }
    }
  });

  it('the error table names the code of every refusal vector', () => {
    const errs = new Map(tableRows(generatedRegions(doc).get('errors')!).map((c) => [c[1]!, Number(c[0])]));
    for (const r of v.refusals) expect(errs.get(r.codeName), r.name).toBe(r.code);
    for (const h of v.handshakes) if (h.codeName) expect(errs.get(h.codeName), h.name).toBe(h.code);
  });

  it('the limits table states the frame and payload bounds the refusal vectors probe', () => {
    const limits = new Map(tableRows(generatedRegions(doc).get('limits')!).map((c) => [c[0]!, Number(c[1])]));
    const over = v.refusals.find((r) => r.name === 'length above frameBytesMax by 1')!;
    expect(24 + over.bytes.readUInt32BE(8)).toBe(limits.get('frameBytesMax')! + 1);
    expect(limits.get('payloadBytesMax')).toBe(1024 * 1024);
  });
});
