// Protocol behaviour of NbdServer, byte by byte, with a raw client: the handshake, every option,
// every command and the spec's error for each misuse; and hostile clients (random bytes, absurd
// lengths, abrupt disconnects, 500 connections) that must not disturb the server, other clients
// or bytes they had no right to change.
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { connect } from 'node:net';
import { MemoryDevice } from '../../hal/memory.js';
import { blockDeviceExport } from '../../src/nbd/blockdev-export.js';
import { NbdServer } from '../../src/nbd/server.js';
import { NbdExportError, type NbdExport } from '../../src/nbd/export.js';
import { Cmd, CmdFlag, Errno, Info, Opt, Rep, ReplyFlag, ReplyType, TransmissionFlag } from '../../src/nbd/protocol.js';
import { RawClient, goData, metaContextData } from './raw-client.js';

const blockBytes = 4096;
const blocks = 256; // 1 MiB
const sizeBytes = blockBytes * blocks;

let dev: MemoryDevice;
let server: NbdServer;
let port: number;
const clients: RawClient[] = [];

function pattern(seed: number, n: number): Buffer {
  const b = Buffer.alloc(n);
  let x = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    b[i] = x & 0xff;
  }
  return b;
}

/** Whether start() gives the exports the callback form of write (the site's export has it). */
let useWriteNow = false;
/** writeNow calls since start(): the server took the fast path for these writes. */
let writeNowCalls = 0;

/** The export with writeNow, as the contract says: done once, never before writeNow returns. */
function withWriteNow(exp: NbdExport): NbdExport {
  return {
    ...exp,
    writeNow: (o, d, opts, done) => {
      writeNowCalls++;
      exp.write(o, d, opts).then(() => done(undefined), done);
    },
  };
}

async function start(extra: Partial<ConstructorParameters<typeof NbdServer>[0]> = {}, exportsOverride?: NbdExport[]): Promise<void> {
  dev = new MemoryDevice({ blockSizeBytes: blockBytes, blockCount: blocks });
  await dev.write(0, pattern(1, sizeBytes));
  writeNowCalls = 0;
  const plain = exportsOverride ?? [
    blockDeviceExport(dev, { name: 'vol0', description: 'the volume' }),
    blockDeviceExport(dev, { name: 'replica', readOnly: true }),
  ];
  const exps = useWriteNow ? plain.map(withWriteNow) : plain;
  server = new NbdServer({ exports: exps, ...extra });
  port = await server.listen('127.0.0.1', 0);
}

async function client(): Promise<RawClient> {
  const c = await RawClient.connect(port);
  clients.push(c);
  return c;
}

async function backing(): Promise<Buffer> {
  return dev.read(0, blocks);
}

/** A client in transmission on `name`. */
async function open(name = 'vol0', structured = false): Promise<{ c: RawClient; flags: number }> {
  const c = await client();
  await c.handshake();
  const { flags } = await c.go(name, structured);
  return { c, flags };
}

afterEach(async () => {
  for (const c of clients.splice(0)) c.close();
  await server?.close();
  // Every byte reserved for payloads came back, whatever the clients did.
  expect(server.budget.usedBytes).toBe(0);
});

describe('handshake', () => {
  beforeEach(() => start());

  it('greets with fixed newstyle + no zeroes and drops unknown client flags', async () => {
    const c = await client();
    expect(await c.handshake(0b111)).toBe(0b11);
    expect(await c.waitClosed()).toBe(true);
  });

  it('answers unknown options (11 = EXTENDED_HEADERS first, as newer libnbd) with ERR_UNSUP and stays in sync', async () => {
    const c = await client();
    await c.handshake();
    for (const opt of [Opt.EXTENDED_HEADERS, 0xdead, Opt.STARTTLS, Opt.PEEK_EXPORT]) {
      c.sendOption(opt, Buffer.from('junk data'));
      const r = await c.readOptionReply();
      expect(r).toMatchObject({ option: opt, type: Rep.ERR_UNSUP });
    }
    const { sizeBytes: size } = await c.go('vol0');
    expect(size).toBe(BigInt(sizeBytes));
  });

  it('lists exports with descriptions', async () => {
    const c = await client();
    await c.handshake();
    c.sendOption(Opt.LIST);
    const rs = await c.readOptionReplies();
    expect(rs.map((r) => r.type)).toEqual([Rep.SERVER, Rep.SERVER, Rep.ACK]);
    const names = rs.slice(0, 2).map((r) => {
      const n = r.data.readUInt32BE(0);
      return [r.data.toString('utf8', 4, 4 + n), r.data.toString('utf8', 4 + n)];
    });
    expect(names).toEqual([['vol0', 'the volume'], ['replica', '']]);
    c.sendOption(Opt.LIST, Buffer.from('x'));
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_INVALID);
  });

  it('INFO reports export, name, description and block sizes; unknown names get ERR_UNKNOWN', async () => {
    const c = await client();
    await c.handshake();
    c.sendOption(Opt.INFO, goData('', [Info.NAME, Info.DESCRIPTION, Info.BLOCK_SIZE]));
    const rs = await c.readOptionReplies();
    expect(rs[rs.length - 1]!.type).toBe(Rep.ACK);
    const byType = new Map(rs.filter((r) => r.type === Rep.INFO).map((r) => [r.data.readUInt16BE(0), r.data]));
    expect(byType.get(Info.EXPORT)!.readBigUInt64BE(2)).toBe(BigInt(sizeBytes));
    expect(byType.get(Info.NAME)!.toString('utf8', 2)).toBe('vol0'); // "" is the default: vol0
    expect(byType.get(Info.DESCRIPTION)!.toString('utf8', 2)).toBe('the volume');
    const bs = byType.get(Info.BLOCK_SIZE)!;
    expect([bs.readUInt32BE(2), bs.readUInt32BE(6), bs.readUInt32BE(10)]).toEqual([1, 4096, 64 * 1024 * 1024]);
    c.sendOption(Opt.INFO, goData('nope'));
    const bad = await c.readOptionReply();
    expect(bad.type).toBe(Rep.ERR_UNKNOWN);
    expect(bad.data.toString()).toMatch(/no export named 'nope'/);
    c.sendOption(Opt.GO, Buffer.from([0, 0, 0, 9, 1])); // name length overruns the option
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_INVALID);
    await c.go('replica'); // still in sync
  });

  it('ABORT is acknowledged and the connection closed', async () => {
    const c = await client();
    await c.handshake();
    c.sendOption(Opt.ABORT);
    expect((await c.readOptionReply()).type).toBe(Rep.ACK);
    expect(await c.waitClosed()).toBe(true);
  });

  it('EXPORT_NAME enters transmission (with or without the 124 zeroes) and closes on unknown names', async () => {
    const c = await client();
    await c.handshake(0b01); // no NO_ZEROES: expect the zeroes
    c.sendOption(Opt.EXPORT_NAME, Buffer.from('vol0'));
    const r = await c.read(8 + 2 + 124);
    expect(r.readBigUInt64BE(0)).toBe(BigInt(sizeBytes));
    expect(r.subarray(10).equals(Buffer.alloc(124))).toBe(true);
    c.sendRequest(Cmd.READ, { cookie: 9n, offset: 0, length: 16 });
    expect((await c.readSimpleReply(16)).data).toEqual(pattern(1, sizeBytes).subarray(0, 16));
    const d = await client();
    await d.handshake();
    d.sendOption(Opt.EXPORT_NAME, Buffer.from('missing'));
    expect(await d.waitClosed()).toBe(true);
  });

  it('caps option length before buffering: ERR_TOO_BIG and in sync, absurd lengths closed', async () => {
    const c = await client();
    await c.handshake();
    c.sendOption(Opt.LIST, Buffer.alloc(100 * 1024, 1));
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_TOO_BIG);
    await c.go('vol0');
    const d = await client();
    await d.handshake();
    d.sendOption(Opt.GO, Buffer.alloc(16), 0xfffffff0); // claims 4 GiB
    expect(await d.waitClosed()).toBe(true);
  });

  it('meta contexts: need structured replies; LIST and SET base:allocation; BLOCK_STATUS works', async () => {
    const c = await client();
    await c.handshake();
    c.sendOption(Opt.SET_META_CONTEXT, metaContextData('vol0', ['base:allocation']));
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_INVALID); // structured replies first
    c.sendOption(Opt.STRUCTURED_REPLY);
    expect((await c.readOptionReply()).type).toBe(Rep.ACK);
    c.sendOption(Opt.LIST_META_CONTEXT, metaContextData('vol0', []));
    let rs = await c.readOptionReplies();
    expect(rs.map((r) => [r.type, r.data.toString('utf8', 4)])).toEqual([[Rep.META_CONTEXT, 'base:allocation'], [Rep.ACK, '']]);
    c.sendOption(Opt.SET_META_CONTEXT, metaContextData('vol0', ['qemu:dirty-bitmap:x', 'base:', 'base:allocation']));
    rs = await c.readOptionReplies();
    expect(rs.map((r) => r.type)).toEqual([Rep.META_CONTEXT, Rep.ACK]);
    const id = rs[0]!.data.readUInt32BE(0);
    c.sendOption(Opt.SET_META_CONTEXT, Buffer.from([0, 0, 0, 4, 1, 2]));
    expect((await c.readOptionReply()).type).toBe(Rep.ERR_INVALID); // malformed (and clears the selection)
    c.sendOption(Opt.SET_META_CONTEXT, metaContextData('vol0', ['base:allocation']));
    await c.readOptionReplies();
    c.sendOption(Opt.GO, goData('vol0'));
    await c.readOptionReplies();
    c.sendRequest(Cmd.BLOCK_STATUS, { cookie: 77n, offset: 4096, length: 65536 });
    const r = await c.readAnyReply();
    expect(r).toMatchObject({ kind: 'chunk', type: ReplyType.BLOCK_STATUS, flags: ReplyFlag.DONE, cookie: 77n });
    const p = (r as { payload: Buffer }).payload;
    expect([p.readUInt32BE(0), p.readUInt32BE(4), p.readUInt32BE(8)]).toEqual([id, 65536, 0]);
    c.sendRequest(Cmd.BLOCK_STATUS, { cookie: 78n, offset: sizeBytes - 4096, length: 8192 });
    const e = await c.readAnyReply();
    expect(e).toMatchObject({ kind: 'chunk', type: ReplyType.ERROR, cookie: 78n });
    expect((e as { payload: Buffer }).payload.readUInt32BE(0)).toBe(Errno.EINVAL);
  });

  it('refuses BLOCK_STATUS without a selected context (EINVAL)', async () => {
    const { c } = await open('vol0', true);
    c.sendRequest(Cmd.BLOCK_STATUS, { cookie: 1n, offset: 0, length: 4096 });
    const r = await c.readAnyReply();
    expect(r.kind === 'chunk' && r.type === ReplyType.ERROR && r.payload.readUInt32BE(0) === Errno.EINVAL).toBe(true);
  });
});

for (const viaWriteNow of [false, true]) {
  describe(`transmission${viaWriteNow ? ' (writeNow)' : ''}`, () => {
    beforeEach(() => {
      useWriteNow = viaWriteNow;
      return start();
    });

    it('advertises flush, FUA, trim, zeroes, cache, multi-conn on vol0 and read-only on replica', async () => {
      const { flags } = await open('vol0');
      const T = TransmissionFlag;
      for (const f of [T.HAS_FLAGS, T.SEND_FLUSH, T.SEND_FUA, T.SEND_TRIM, T.SEND_WRITE_ZEROES, T.SEND_FAST_ZERO, T.SEND_CACHE, T.CAN_MULTI_CONN]) {
        expect(flags & f).toBe(f);
      }
      expect(flags & (T.READ_ONLY | T.SEND_DF)).toBe(0); // DF only with structured replies
      const ro = await open('replica', true);
      expect(ro.flags & T.READ_ONLY).toBe(T.READ_ONLY);
      expect(ro.flags & (T.SEND_TRIM | T.SEND_WRITE_ZEROES)).toBe(0);
      expect(ro.flags & T.SEND_DF).toBe(T.SEND_DF);
    });

    it('echoes 8-byte cookies exactly (beyond 2^53) and replies to many requests in flight', async () => {
      const { c } = await open('vol0');
      const expected = pattern(1, sizeBytes);
      const cookies: bigint[] = [];
      for (let i = 0; i < 200; i++) {
        const cookie = 0xffff_ffff_ffff_ff00n + BigInt(i) - 2n ** 20n * BigInt(i % 3);
        cookies.push(cookie);
        c.sendRequest(Cmd.READ, { cookie, offset: i * 512, length: 512 });
      }
      const seen = new Set<bigint>();
      for (let i = 0; i < 200; i++) {
        const r = await c.readSimpleReply(512);
        const idx = cookies.indexOf(r.cookie);
        expect(idx).toBeGreaterThanOrEqual(0);
        expect(r.data.equals(expected.subarray(idx * 512, idx * 512 + 512))).toBe(true);
        seen.add(r.cookie);
      }
      expect(seen.size).toBe(200);
    });

    it('writes (aligned, unaligned, FUA) read back; structured READ uses OFFSET_DATA', async () => {
      const { c } = await open('vol0', true);
      const model = pattern(1, sizeBytes);
      const writes: [number, Buffer, number][] = [
        [8192, pattern(2, 8192), 0],
        [100, pattern(3, 1000), CmdFlag.FUA],
        [4095, pattern(4, 2), 0], // straddles a block boundary
        [sizeBytes - 7, pattern(5, 7), 0],
      ];
      let cookie = 1n;
      for (const [off, data, flags] of writes) {
        c.sendRequest(Cmd.WRITE, { cookie: cookie++, offset: off, payload: data, flags });
        data.copy(model, off);
        const r = await c.readAnyReply();
        expect(r).toMatchObject({ kind: 'simple', error: 0 });
      }
      c.sendRequest(Cmd.READ, { cookie: 99n, offset: 0, length: 16384 });
      const r = await c.readAnyReply();
      expect(r).toMatchObject({ kind: 'chunk', type: ReplyType.OFFSET_DATA, flags: ReplyFlag.DONE, cookie: 99n });
      const p = (r as { payload: Buffer }).payload;
      expect(p.readBigUInt64BE(0)).toBe(0n);
      expect(p.subarray(8).equals(model.subarray(0, 16384))).toBe(true);
      expect((await backing()).equals(model)).toBe(true);
    });

    it('concurrent overlapping unaligned writes never tear blocks (read-modify-write under the range lock)', async () => {
      const a = await open('vol0');
      const b = await open('vol0');
      // Each client writes disjoint byte ranges that share blocks with the other's; all in flight.
      const model = pattern(1, sizeBytes);
      let n = 0;
      for (let i = 0; i < 64; i++) {
        const base = (i % 8) * blockBytes;
        const who = i % 2 === 0 ? a.c : b.c;
        const off = base + (i % 2) * 2048 + Math.floor(i / 16) * 512;
        const data = Buffer.alloc(300, i + 1);
        data.copy(model, off);
        who.sendRequest(Cmd.WRITE, { cookie: BigInt(i), offset: off, payload: data });
        n++;
      }
      for (let i = 0; i < n / 2; i++) {
        expect((await a.c.readSimpleReply()).error).toBe(0);
        expect((await b.c.readSimpleReply()).error).toBe(0);
      }
      expect((await backing()).equals(model)).toBe(true);
    });

    it('WRITE_ZEROES (partial blocks, NO_HOLE, FUA) zeroes exactly the range; FAST_ZERO gets ENOTSUP and changes nothing', async () => {
      const { c } = await open('vol0');
      const model = pattern(1, sizeBytes);
      c.sendRequest(Cmd.WRITE_ZEROES, { cookie: 1n, offset: 1000, length: 3 * 4096 + 17, flags: CmdFlag.NO_HOLE | CmdFlag.FUA });
      expect((await c.readSimpleReply()).error).toBe(0);
      model.fill(0, 1000, 1000 + 3 * 4096 + 17);
      c.sendRequest(Cmd.WRITE_ZEROES, { cookie: 2n, offset: 65536, length: 65536, flags: CmdFlag.FAST_ZERO });
      expect((await c.readSimpleReply()).error).toBe(Errno.ENOTSUP);
      c.sendRequest(Cmd.WRITE_ZEROES, { cookie: 3n, offset: 70000, length: 10 });
      expect((await c.readSimpleReply()).error).toBe(0);
      model.fill(0, 70000, 70010);
      expect((await backing()).equals(model)).toBe(true);
    });

    it('TRIM and CACHE succeed; FLUSH with nonzero offset is EINVAL', async () => {
      const { c } = await open('vol0');
      c.sendRequest(Cmd.TRIM, { cookie: 1n, offset: 4096, length: 8192 });
      expect((await c.readSimpleReply()).error).toBe(0);
      c.sendRequest(Cmd.CACHE, { cookie: 2n, offset: 0, length: sizeBytes });
      expect((await c.readSimpleReply()).error).toBe(0);
      c.sendRequest(Cmd.FLUSH, { cookie: 3n });
      expect((await c.readSimpleReply()).error).toBe(0);
      c.sendRequest(Cmd.FLUSH, { cookie: 4n, offset: 512 });
      expect((await c.readSimpleReply()).error).toBe(Errno.EINVAL);
    });

    it('gives the spec errors: beyond the end ENOSPC/EINVAL, unknown command/flags EINVAL, read-only EPERM, oversize EINVAL', async () => {
      const before = await backing();
      const { c } = await open('vol0');
      const expectErr = async (errno: number) => expect((await c.readSimpleReply()).error).toBe(errno);
      c.sendRequest(Cmd.WRITE, { cookie: 1n, offset: sizeBytes - 512, payload: Buffer.alloc(1024, 9) });
      await expectErr(Errno.ENOSPC);
      c.sendRequest(Cmd.WRITE, { cookie: 2n, offset: 2n ** 64n - 512n, payload: Buffer.alloc(1024, 9) });
      await expectErr(Errno.ENOSPC);
      c.sendRequest(Cmd.WRITE_ZEROES, { cookie: 3n, offset: sizeBytes, length: 1 });
      await expectErr(Errno.ENOSPC);
      c.sendRequest(Cmd.READ, { cookie: 4n, offset: sizeBytes - 1, length: 2 });
      await expectErr(Errno.EINVAL);
      c.sendRequest(Cmd.TRIM, { cookie: 5n, offset: sizeBytes, length: 4096 });
      await expectErr(Errno.EINVAL);
      c.sendRequest(Cmd.CACHE, { cookie: 6n, offset: sizeBytes, length: 4096 });
      await expectErr(Errno.EINVAL);
      c.sendRequest(99, { cookie: 7n, length: 4096 });
      await expectErr(Errno.EINVAL);
      c.sendRequest(Cmd.WRITE, { cookie: 8n, payload: Buffer.alloc(512, 9), flags: 0x8000 });
      await expectErr(Errno.EINVAL);
      c.sendRequest(Cmd.READ, { cookie: 9n, length: 512, flags: CmdFlag.DF }); // DF not advertised without structured replies
      await expectErr(Errno.EINVAL);
      c.sendRequest(Cmd.READ, { cookie: 10n, length: 64 * 1024 * 1024 + 1 });
      await expectErr(Errno.EINVAL);
      // A write longer than the maximum block size is skipped unread and answered EINVAL; in sync after.
      c.sendRequest(Cmd.WRITE, { cookie: 11n, offset: 0, payload: Buffer.alloc(64 * 1024 * 1024 + 4096, 9) });
      await expectErr(Errno.EINVAL);
      c.sendRequest(Cmd.READ, { cookie: 12n, offset: 0, length: 4096 });
      const ok = await c.readSimpleReply(4096);
      expect(ok.cookie).toBe(12n);
      expect(ok.data.equals(before.subarray(0, 4096))).toBe(true);
      const ro = await open('replica');
      ro.c.sendRequest(Cmd.WRITE, { cookie: 1n, offset: 0, payload: Buffer.alloc(4096, 1) });
      expect((await ro.c.readSimpleReply()).error).toBe(Errno.EPERM);
      ro.c.sendRequest(Cmd.WRITE_ZEROES, { cookie: 2n, offset: 0, length: 4096 });
      expect((await ro.c.readSimpleReply()).error).toBe(Errno.EPERM);
      ro.c.sendRequest(Cmd.TRIM, { cookie: 3n, offset: 0, length: 4096 });
      expect((await ro.c.readSimpleReply()).error).toBe(Errno.EPERM);
      expect((await backing()).equals(before)).toBe(true);
    });

    it('structured errors for READ carry the errno and a message', async () => {
      const { c } = await open('vol0', true);
      c.sendRequest(Cmd.READ, { cookie: 5n, offset: sizeBytes, length: 512 });
      const r = await c.readAnyReply();
      expect(r).toMatchObject({ kind: 'chunk', type: ReplyType.ERROR, flags: ReplyFlag.DONE, cookie: 5n });
      const p = (r as { payload: Buffer }).payload;
      expect(p.readUInt32BE(0)).toBe(Errno.EINVAL);
      expect(p.toString('utf8', 6, 6 + p.readUInt16BE(4))).toMatch(/past the end of export 'vol0'/);
    });

    it('a client that half-closes after sending still gets every reply, then EOF (no DISC needed)', async () => {
      const { c } = await open('vol0');
      for (let i = 0; i < 20; i++) c.sendRequest(Cmd.WRITE, { cookie: BigInt(i), offset: i * 4096, payload: Buffer.alloc(4096, i) });
      c.socket.end();
      const cookies = new Set<bigint>();
      for (let i = 0; i < 20; i++) cookies.add((await c.readSimpleReply()).cookie);
      expect(cookies.size).toBe(20);
      expect(await c.waitClosed()).toBe(true);
      const b = await backing();
      for (let i = 0; i < 20; i++) expect(b.subarray(i * 4096, i * 4096 + 4096).equals(Buffer.alloc(4096, i))).toBe(true);
    });

    it('DISC finishes in-flight requests, then closes', async () => {
      const { c } = await open('vol0');
      c.sendRequest(Cmd.WRITE, { cookie: 1n, offset: 0, payload: Buffer.alloc(65536, 0x42) });
      c.sendRequest(Cmd.DISC, { cookie: 2n });
      expect((await c.readSimpleReply()).error).toBe(0);
      expect(await c.waitClosed()).toBe(true);
      expect((await backing()).subarray(0, 65536).equals(Buffer.alloc(65536, 0x42))).toBe(true);
    });
  });
}

describe('writeNow fast path (issue 18)', () => {
  beforeEach(() => {
    useWriteNow = true;
    return start();
  });
  afterEach(() => {
    useWriteNow = false;
  });

  it('takes aligned writes only; unaligned ones go the read-modify-write way; both read back', async () => {
    const { c } = await open('vol0');
    const model = pattern(1, sizeBytes);
    const writes: [number, Buffer][] = [
      [0, pattern(7, 4096)],
      [8192, pattern(8, 3 * 4096)],
      [100, pattern(9, 1000)], // unaligned: not through writeNow
    ];
    let cookie = 1n;
    for (const [off, data] of writes) {
      c.sendRequest(Cmd.WRITE, { cookie: cookie++, offset: off, payload: data, flags: CmdFlag.FUA });
      data.copy(model, off);
    }
    for (let i = 0; i < writes.length; i++) expect((await c.readSimpleReply()).error).toBe(0);
    // The unaligned write's read-modify-write writes its block through write(), not writeNow.
    expect(writeNowCalls).toBe(2);
    expect((await backing()).equals(model)).toBe(true);
  });

  it('an error from writeNow reaches the client with its errno, and the connection carries on', async () => {
    await server.close();
    dev = new MemoryDevice({ blockSizeBytes: blockBytes, blockCount: blocks });
    const base = blockDeviceExport(dev, { name: 'vol0' });
    const failing: NbdExport = {
      ...base,
      writeNow: (o, _d, _opts, done) => {
        setImmediate(() => done(new NbdExportError(Errno.ENOSPC, `no room at ${o}`)));
      },
    };
    server = new NbdServer({ exports: [failing] });
    port = await server.listen('127.0.0.1', 0);
    const { c } = await open('vol0', true);
    c.sendRequest(Cmd.WRITE, { cookie: 5n, offset: 4096, payload: pattern(3, 4096) });
    const r = await c.readAnyReply();
    expect(r).toMatchObject({ kind: 'chunk', type: ReplyType.ERROR, cookie: 5n });
    expect((r as { payload: Buffer }).payload.readUInt32BE(0)).toBe(Errno.ENOSPC);
    c.sendRequest(Cmd.FLUSH, { cookie: 6n });
    expect(await c.readAnyReply()).toMatchObject({ kind: 'simple', error: 0, cookie: 6n });
  });
});

describe('shutdown', () => {
  it('close() lets idle and negotiating clients go and resolves', async () => {
    await start();
    const idle = await open('vol0');
    const haggling = await client();
    await haggling.handshake();
    await server.close();
    expect(await idle.c.waitClosed()).toBe(true);
    expect(await haggling.waitClosed()).toBe(true);
  });
});

for (const viaWriteNow of [false, true]) {
  describe(`hostile clients${viaWriteNow ? ' (writeNow)' : ''}`, () => {
    beforeEach(() => {
      useWriteNow = viaWriteNow;
    });
    it('random bytes (seeded) get a closed connection or errors; the server and other clients carry on', async () => {
      await start();
      const before = await backing();
      const good = await open('vol0');
      for (let seed = 1; seed <= 40; seed++) {
        const c = await client();
        const junk = pattern(seed, 64 + seed * 97);
        if (seed % 2 === 0) {
          await c.handshake(); // junk after a valid handshake start
        }
        c.write(junk);
        c.socket.end();
        await c.waitClosed();
      }
      good.c.sendRequest(Cmd.READ, { cookie: 1n, offset: 0, length: sizeBytes });
      expect((await good.c.readSimpleReply(sizeBytes)).data.equals(before)).toBe(true);
      expect((await backing()).equals(before)).toBe(true);
    });

    it('random bytes in transmission after a valid request header: only the addressed range can change', async () => {
      await start();
      const before = await backing();
      for (let seed = 1; seed <= 20; seed++) {
        const { c } = await open('replica'); // read-only: nothing may change whatever arrives
        c.write(pattern(seed * 7, 2000));
        c.socket.end();
        await c.waitClosed();
      }
      expect((await backing()).equals(before)).toBe(true);
    });

    it('abrupt disconnect mid-payload leaves the backing unchanged; other clients carry on', async () => {
      await start();
      const before = await backing();
      const { c } = await open('vol0');
      const h = Buffer.alloc(28);
      h.writeUInt32BE(0x25609513, 0);
      h.writeUInt16BE(Cmd.WRITE, 6);
      h.writeUInt32BE(65536, 24);
      c.write(Buffer.concat([h, Buffer.alloc(30000, 0x77)]));
      await new Promise((r) => setTimeout(r, 50));
      c.close();
      const other = await open('vol0');
      other.c.sendRequest(Cmd.FLUSH, { cookie: 1n });
      expect((await other.c.readSimpleReply()).error).toBe(0);
      expect((await backing()).equals(before)).toBe(true);
    });

    it('a client that sends without reading replies is throttled: the server stops reading, memory stays bounded', async () => {
      const limits = { replyQueueBytesMax: 1024 * 1024, requestsInflightMax: 8 };
      await start({ limits });
      const { c } = await open('vol0');
      c.socket.pause(); // never read a reply
      const batch = Buffer.alloc(28 * 10_000);
      for (let i = 0; i < 10_000; i++) {
        batch.writeUInt32BE(0x25609513, i * 28);
        batch.writeUInt16BE(Cmd.READ, i * 28 + 6);
        batch.writeUInt32BE(sizeBytes, i * 28 + 24); // each reply is 1 MiB
      }
      let batches = 0;
      // 200 batches would be 2 million 1 MiB replies; TCP must push back long before that.
      while (batches < 200 && c.socket.writableLength < 4 * 1024 * 1024) {
        c.socket.write(batch);
        batches++;
        await new Promise((r) => setTimeout(r, 5));
      }
      expect(batches).toBeLessThan(200);
      for (const s of server.connectionStats()) {
        expect(s.inflightRequests).toBeLessThanOrEqual(limits.requestsInflightMax);
        expect(s.replyQueueBytes).toBeLessThanOrEqual(limits.replyQueueBytesMax + limits.requestsInflightMax * (sizeBytes + 64));
        expect(s.parserHeldBytes).toBeLessThanOrEqual(65536 + 28);
      }
      const other = await open('vol0');
      other.c.sendRequest(Cmd.READ, { cookie: 3n, offset: 0, length: 16 });
      expect((await other.c.readSimpleReply(16)).cookie).toBe(3n);
    });

    it('a client that never reads its replies is disconnected after the stall timeout, freeing memory', async () => {
      await start({ limits: { replyQueueBytesMax: 256 * 1024, replyStallTimeoutMs: 200 } });
      const { c } = await open('vol0');
      c.socket.pause();
      for (let i = 0; i < 64; i++) c.sendRequest(Cmd.READ, { cookie: BigInt(i), offset: 0, length: sizeBytes });
      // The paused client cannot see the close itself; watch the server drop it (bounded wait).
      for (let i = 0; i < 200 && server.connectionCount > 0; i++) await new Promise((r) => setTimeout(r, 25));
      expect(server.connectionCount).toBe(0);
      expect(server.budget.usedBytes).toBe(0);
    });

    it('the server-wide payload budget makes writers wait (not fail) and all complete', async () => {
      await start({ limits: { serverPayloadBytesMax: 64 * 1024, requestBytesMax: 64 * 1024 } });
      const writers = await Promise.all([open('vol0'), open('vol0'), open('vol0')]);
      const model = pattern(1, sizeBytes);
      writers.forEach(({ c }, w) => {
        for (let i = 0; i < 10; i++) {
          const off = (w * 10 + i) * 32768;
          const data = Buffer.alloc(32768, w * 10 + i + 1); // two fit the budget at once
          data.copy(model, off);
          c.sendRequest(Cmd.WRITE, { cookie: BigInt(i), offset: off, payload: data });
        }
        c.sendRequest(Cmd.READ, { cookie: 99n, offset: 0, length: 64 * 1024 });
      });
      for (const { c } of writers) {
        for (let i = 0; i < 10; i++) expect((await c.readSimpleReply()).error).toBe(0);
      }
      for (const { c } of writers) expect((await c.readSimpleReply(64 * 1024)).cookie).toBe(99n);
      expect((await backing()).equals(model)).toBe(true);
      expect(server.budget.usedBytes).toBe(0);
    });

    it('500 connections at once all complete a handshake and a read', async () => {
      await start();
      const expected = pattern(1, sizeBytes).subarray(0, 4096);
      const results = await Promise.all(
        Array.from({ length: 500 }, async (_, i) => {
          const { c } = await open(i % 2 === 0 ? 'vol0' : '');
          c.sendRequest(Cmd.READ, { cookie: BigInt(i), offset: 0, length: 4096 });
          const r = await c.readSimpleReply(4096);
          return r.cookie === BigInt(i) && r.data.equals(expected);
        }),
      );
      expect(results.every(Boolean)).toBe(true);
    });

    it('beyond connectionsMax a client is told why (ERR_POLICY) and closed; slots free up', async () => {
      await start({ limits: { connectionsMax: 2 } });
      const a = await open('vol0');
      await open('vol0');
      const c = await client();
      await c.handshake();
      c.sendOption(Opt.GO, goData('vol0'));
      const r = await c.readOptionReply();
      expect(r.type).toBe(Rep.ERR_POLICY);
      expect(r.data.toString()).toMatch(/limit of 2 connections/);
      a.c.close();
      await a.c.waitClosed();
      await new Promise((res) => setTimeout(res, 50));
      const { c: d } = await open('vol0');
      d.sendRequest(Cmd.FLUSH, { cookie: 1n });
      expect((await d.readSimpleReply()).error).toBe(0);
    });

    it('a plain TCP connect that says nothing is dropped after the handshake timeout', async () => {
      await start({ limits: { handshakeTimeoutMs: 100 } });
      const s = connect({ host: '127.0.0.1', port });
      s.resume(); // read (and drop) the greeting so the server's close is seen
      const closed = await new Promise<boolean>((res) => s.on('close', () => res(true)).on('error', () => undefined));
      expect(closed).toBe(true);
    });
  });
}
