// Minimal typings for buffer-layout 1.2 (the package ships none). Only what we use.
declare module 'buffer-layout' {
  export class Layout<T = any> {
    span: number;
    property?: string;
    decode(b: Buffer, offset?: number): T;
    encode(src: T, b: Buffer, offset?: number): number;
    getSpan(b?: Buffer, offset?: number): number;
    replicate(property: string): Layout<T>;
  }
  export class Structure<T = any> extends Layout<T> {
    fields: Layout[];
    offsetOf(property: string): number | undefined;
    layoutFor(property: string): Layout | undefined;
  }
  export function struct<T = any>(fields: Layout[], property?: string, decodePrefixes?: boolean): Structure<T>;
  export function u8(property?: string): Layout<number>;
  export function u16(property?: string): Layout<number>;
  export function u16be(property?: string): Layout<number>;
  export function u24be(property?: string): Layout<number>;
  export function u32(property?: string): Layout<number>;
  export function u32be(property?: string): Layout<number>;
  export function u48be(property?: string): Layout<number>;
  export function nu64be(property?: string): Layout<number>;
  export function nu64(property?: string): Layout<number>;
  export function s8(property?: string): Layout<number>;
  export function s32be(property?: string): Layout<number>;
  export function blob(length: number | Layout<number>, property?: string): Layout<Buffer>;
  export function seq<T>(elementLayout: Layout<T>, count: number | Layout<number>, property?: string): Layout<T[]>;
  export function greedy(elementSpan?: number, property?: string): Layout<number>;
  export function offset<T>(layout: Layout<T>, offset?: number, property?: string): Layout<T>;
  export function cstr(property?: string): Layout<string>;
  export function utf8(maxSpan?: number, property?: string): Layout<string>;
  const _default: any;
  export default _default;
}
