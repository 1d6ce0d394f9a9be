// A minimal, deliberately dumb NBD client for tests: it sends exactly the bytes a test builds
// (including hostile ones) and reads exact byte counts back, so tests can check every reply
// field. Not for production use.

import { connect, type Socket } from 'node:net';
import {
  IHAVEOPT,
  NBDMAGIC,
  OPTION_REPLY_MAGIC,
  REQUEST_MAGIC,
  SIMPLE_REPLY_MAGIC,
  STRUCTURED_REPLY_MAGIC,
  Opt,
  Rep,
} from '../../src/nbd/protocol.js';

export class RawClient {
  private buf = Buffer.alloc(0);
  private waiters: (() => void)[] = [];
  private closedFlag = false;

  private constructor(readonly socket: Socket) {
    socket.on('data', (c: Buffer) => {
      this.buf = Buffer.concat([this.buf, c]);
      this.wake();
    });
    socket.on('close', () => {
      this.closedFlag = true;
      this.wake();
    });
    socket.on('error', () => undefined);
  }

  static connect(port: number): Promise<RawClient> {
    return new Promise((resolve, reject) => {
      const s = connect({ host: '127.0.0.1', port }, () => resolve(new RawClient(s)));
      s.once('error', reject);
    });
  }

  get closed(): boolean {
    return this.closedFlag;
  }

  private wake(): void {
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }

  /** Reads exactly n bytes; rejects if the server closes first. */
  async read(n: number): Promise<Buffer> {
    while (this.buf.length < n) {
      if (this.closedFlag) throw new Error(`connection closed with ${this.buf.length}/${n} bytes`);
      await new Promise<void>((r) => this.waiters.push(r));
    }
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    return out;
  }

  /** Resolves true when the server has closed the connection (and no unread bytes are left). */
  async waitClosed(): Promise<boolean> {
    while (!this.closedFlag) await new Promise<void>((r) => this.waiters.push(r));
    return true;
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  /** Reads the greeting, checks it, sends client flags. */
  async handshake(clientFlags = 0b11): Promise<number> {
    const g = await this.read(18);
    if (g.readBigUInt64BE(0) !== NBDMAGIC || g.readBigUInt64BE(8) !== IHAVEOPT) throw new Error('bad greeting');
    const c = Buffer.alloc(4);
    c.writeUInt32BE(clientFlags >>> 0);
    this.write(c);
    return g.readUInt16BE(16);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0), claimedLength = data.length): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(option >>> 0, 8);
    h.writeUInt32BE(claimedLength >>> 0, 12);
    this.write(Buffer.concat([h, data]));
  }

  async readOptionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    if (h.readBigUInt64BE(0) !== OPTION_REPLY_MAGIC) throw new Error(`bad option reply magic ${h.toString('hex')}`);
    const len = h.readUInt32BE(16);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: Buffer.from(await this.read(len)) };
  }

  /** Reads option replies until a final one (ACK or error). */
  async readOptionReplies(): Promise<{ option: number; type: number; data: Buffer }[]> {
    const out = [];
    for (;;) {
      const r = await this.readOptionReply();
      out.push(r);
      if (r.type === Rep.ACK || r.type >= 0x80000000) return out;
    }
  }

  /** NBD_OPT_GO; returns size and transmission flags. */
  async go(name: string, structured = false, infos: number[] = []): Promise<{ sizeBytes: bigint; flags: number }> {
    if (structured) {
      this.sendOption(Opt.STRUCTURED_REPLY);
      const r = await this.readOptionReply();
      if (r.type !== Rep.ACK) throw new Error('structured reply refused');
    }
    this.sendOption(Opt.GO, goData(name, infos));
    const replies = await this.readOptionReplies();
    const last = replies[replies.length - 1]!;
    if (last.type !== Rep.ACK) throw new Error(`GO failed: 0x${last.type.toString(16)} ${last.data.toString()}`);
    const exp = replies.find((r) => r.type === Rep.INFO && r.data.readUInt16BE(0) === 0)!;
    return { sizeBytes: exp.data.readBigUInt64BE(2), flags: exp.data.readUInt16BE(10) };
  }

  sendRequest(command: number, opts: { flags?: number; cookie?: bigint; offset?: bigint | number; length?: number; payload?: Buffer } = {}): void {
    const h = Buffer.alloc(28);
    h.writeUInt32BE(REQUEST_MAGIC, 0);
    h.writeUInt16BE(opts.flags ?? 0, 4);
    h.writeUInt16BE(command, 6);
    h.writeBigUInt64BE(opts.cookie ?? 1n, 8);
    h.writeBigUInt64BE(BigInt(opts.offset ?? 0), 16);
    h.writeUInt32BE(opts.length ?? opts.payload?.length ?? 0, 24);
    this.write(opts.payload === undefined ? h : Buffer.concat([h, opts.payload]));
  }

  /** Reads a simple reply header; if dataBytes > 0 and error is 0, also the data. */
  async readSimpleReply(dataBytes = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
    const h = await this.read(16);
    if (h.readUInt32BE(0) !== SIMPLE_REPLY_MAGIC) throw new Error(`expected a simple reply, got ${h.toString('hex')}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataBytes > 0 ? Buffer.from(await this.read(dataBytes)) : Buffer.alloc(0);
    return { error, cookie: h.readBigUInt64BE(8), data };
  }

  /** Reads one reply of either kind (structured: one chunk). */
  async readAnyReply(): Promise<
    | { kind: 'simple'; error: number; cookie: bigint }
    | { kind: 'chunk'; flags: number; type: number; cookie: bigint; payload: Buffer }
  > {
    const magic = (await this.read(4)).readUInt32BE(0);
    if (magic === SIMPLE_REPLY_MAGIC) {
      const h = await this.read(12);
      return { kind: 'simple', error: h.readUInt32BE(0), cookie: h.readBigUInt64BE(4) };
    }
    if (magic !== STRUCTURED_REPLY_MAGIC) throw new Error(`bad reply magic 0x${magic.toString(16)}`);
    const h = await this.read(16);
    const len = h.readUInt32BE(12);
    return { kind: 'chunk', flags: h.readUInt16BE(0), type: h.readUInt16BE(2), cookie: h.readBigUInt64BE(4), payload: Buffer.from(await this.read(len)) };
  }

  close(): void {
    this.socket.destroy();
  }
}

export function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const d = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  d.writeUInt32BE(n.length, 0);
  n.copy(d, 4);
  d.writeUInt16BE(infos.length, 4 + n.length);
  infos.forEach((t, i) => d.writeUInt16BE(t, 6 + n.length + 2 * i));
  return d;
}

export function metaContextData(name: string, queries: string[]): Buffer {
  const parts: Buffer[] = [];
  const u32 = (v: number) => {
    const b = Buffer.alloc(4);
    b.writeUInt32BE(v);
    return b;
  };
  const n = Buffer.from(name);
  parts.push(u32(n.length), n, u32(queries.length));
  for (const q of queries) {
    const qb = Buffer.from(q);
    parts.push(u32(qb.length), qb);
  }
  return Buffer.concat(parts);
}
