// Loads test/conformance/vectors.json with bigints and buffers restored.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import type { Message } from '../../src/wire/index.js';
import { fromJson, type HandshakeVector, type Json } from './vectors.js';

export const vectorsPath = fileURLToPath(new URL('./vectors.json', import.meta.url));

export interface MessageVector { name: string; frameSeq: number; fields: Message; hex: string; bytes: Buffer }
export interface RefusalVectorLoaded { name: string; hex: string; bytes: Buffer; code: number; codeName: string; reasonIncludes: string }
export interface Vectors {
  raw: Json;
  secret: Buffer;
  cluster: string;
  messages: MessageVector[];
  refusals: RefusalVectorLoaded[];
  handshakes: HandshakeVector[];
}

export function loadVectors(path = vectorsPath): Vectors {
  const raw = JSON.parse(readFileSync(path, 'utf8')) as Record<string, Json>;
  const messages = (raw.messages as Record<string, Json>[]).map((m) => ({
    name: m.name as string,
    frameSeq: m.frameSeq as number,
    fields: fromJson(m.fields!) as Message,
    hex: m.hex as string,
    bytes: Buffer.from(m.hex as string, 'hex'),
  }));
  const refusals = (raw.refusals as Record<string, Json>[]).map((r) => ({
    name: r.name as string, hex: r.hex as string, bytes: Buffer.from(r.hex as string, 'hex'),
    code: r.code as number, codeName: r.codeName as string, reasonIncludes: r.reasonIncludes as string,
  }));
  return {
    raw,
    secret: Buffer.from(raw.secretHex as string, 'hex'),
    cluster: raw.cluster as string,
    messages,
    refusals,
    handshakes: raw.handshakes as unknown as HandshakeVector[],
  };
}
