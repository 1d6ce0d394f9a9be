// The one source of truth for every fixed byte layout of the protocol: a list of field specs
// per struct, from which we build (a) the buffer-layout Structure used to encode/decode control
// messages and to prove the hand-coded hot path right, and (b) the tables of docs/PROTOCOL.md
// (src/wire/doc.ts renders them; test/conformance/doc.test.ts checks the doc against them).
import * as BL from 'buffer-layout';
import { readU64BE, writeU64BE } from '../../hal/u64.js';

export type FieldType = 'u8' | 'u16' | 'u32' | 'u64' | 'bytes32';

export interface FieldSpec {
  readonly name: string;
  readonly type: FieldType;
  readonly doc: string;
}

export const fieldBytes: Record<FieldType, number> = { u8: 1, u16: 2, u32: 4, u64: 8, bytes32: 32 };

type LayoutCtor = new (span: number, property?: string) => BL.Layout<bigint>;

/**
 * u64 big-endian as a bigint. buffer-layout's own nu64be decodes to a JS number and loses
 * precision past 2^53 (DESIGN.md, "Facts already checked"); epochs, seqs and byte offsets are
 * u64 on the wire, so they stay bigint end to end.
 */
class U64BE extends (BL.Layout as unknown as LayoutCtor) {
  constructor(property?: string) {
    super(8, property);
  }
  override decode(b: Buffer, offset = 0): bigint {
    return readU64BE(b, offset);
  }
  override encode(src: bigint, b: Buffer, offset = 0): number {
    writeU64BE(b, src, offset);
    return 8;
  }
}

function fieldLayout(f: FieldSpec): BL.Layout {
  switch (f.type) {
    case 'u8':
      return BL.u8(f.name);
    case 'u16':
      return BL.u16be(f.name);
    case 'u32':
      return BL.u32be(f.name);
    case 'u64':
      return new U64BE(f.name);
    case 'bytes32':
      return BL.blob(32, f.name);
  }
}

export interface StructSpec {
  readonly name: string;
  readonly fields: readonly FieldSpec[];
}

/** A struct spec with its buffer-layout Structure and field offsets. */
export interface BuiltStruct extends StructSpec {
  readonly layout: BL.Structure<Record<string, unknown>>;
  readonly spanBytes: number;
  offsetOf(field: string): number;
}

export function buildStruct(spec: StructSpec): BuiltStruct {
  const layout = BL.struct<Record<string, unknown>>(spec.fields.map(fieldLayout));
  const offsets = new Map<string, number>();
  let at = 0;
  for (const f of spec.fields) {
    if (offsets.has(f.name)) throw new Error(`wire layout ${spec.name}: field ${f.name} declared twice`);
    offsets.set(f.name, at);
    at += fieldBytes[f.type];
  }
  // Assert the two views of the layout agree (our offsets vs buffer-layout's).
  if (layout.span !== at) throw new Error(`wire layout ${spec.name}: span ${layout.span} != ${at}`);
  for (const f of spec.fields) {
    if (layout.offsetOf(f.name) !== offsets.get(f.name)) throw new Error(`wire layout ${spec.name}: offset of ${f.name}`);
  }
  return {
    ...spec,
    layout,
    spanBytes: at,
    offsetOf(field: string): number {
      const o = offsets.get(field);
      if (o === undefined) throw new Error(`wire layout ${spec.name} has no field ${field}`);
      return o;
    },
  };
}
