// The replication wire protocol v1 (docs/PROTOCOL.md): layouts, codec, parser, handshake.
export * from './errors.js';
export * from './frames.js';
export * from './parser.js';
export * from './handshake.js';
export { crc32, crc32Small } from './crc.js';
