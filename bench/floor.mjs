// The floor of `npm run bench` (issue 18 item 6): the least a Node.js program must do to keep
// three copies with geomirror's durability steps, and nothing else. No roles, no epochs, no
// failover, no resync, no TLS, no metrics, no bounds checks worth the name: it exists only so the
// bench can say how close geomirror's write path comes to what the runtime allows.
//
// Per host write, the primary (an NBD server):
//   CRC-32 of the payload; the journal entry (header + payload) with one synchronous positional
//   writev into the cache file (the page cache is the battery, as in hal/cachedev.ts); the write
//   frame to each mirror (corked: one writev per mirror per event-loop turn); the payload with one
//   synchronous positional write into the storage file; the NBD reply once both mirrors acked
//   (replies of one turn leave in one writev).
// Per write frame, a mirror: CRC check; journal writev; storage write; one cumulative ACK per
// received chunk. FLUSH: fdatasync of storage on every copy (mirrors through a FLUSH frame) before
// the reply. Every 16 MiB of journal each site fdatasyncs its storage off the event loop (what
// lets a real journal reuse its ring).
//
//   node bench/floor.mjs primary DIR SIZE_BYTES NBD_PORT MIRROR_PORT[,MIRROR_PORT...]
//   node bench/floor.mjs mirror  DIR SIZE_BYTES LISTEN_PORT
//
// Everything binds to 127.0.0.1. Plain JavaScript, run directly by node (no build, no loader).
import { crc32 } from '@node-rs/crc32';
import { closeSync, fdatasync, ftruncateSync, openSync, readSync, writeSync, writevSync } from 'node:fs';
import { connect, createServer } from 'node:net';
import { join } from 'node:path';

const cacheBytes = 64 * 1024 * 1024;
const syncEveryBytes = 16 * 1024 * 1024;
const entryHeaderBytes = 64;
const frameHeaderBytes = 32;
const frameMagic = 0x464c4f52; // "FLOR"
const F_WRITE = 1;
const F_ACK = 2;
const F_FLUSH = 3;
const F_FLUSH_ACK = 4;

const [role, dir, sizeText, portText, mirrorText] = process.argv.slice(2);
if ((role !== 'primary' && role !== 'mirror') || dir === undefined || sizeText === undefined || portText === undefined) {
  process.stderr.write('usage: node bench/floor.mjs primary DIR SIZE NBD_PORT MIRROR_PORTS | mirror DIR SIZE PORT\n');
  process.exit(2);
}
const sizeBytes = Number(sizeText);
const name = role === 'primary' ? 'primary' : `mirror-${portText}`;
const cacheFd = openSync(join(dir, `${name}.cache`), 'w+');
const storageFd = openSync(join(dir, `${name}.img`), 'w+');
ftruncateSync(cacheFd, cacheBytes); // sparse, as the bench's other systems
ftruncateSync(storageFd, sizeBytes);

/** The journal: entries back to back in a ring, header + payload in one synchronous pwritev. */
let ringPos = 0;
let sinceSyncBytes = 0;
let syncing = false;
function journal(seq, offsetBytes, payload, crc) {
  const h = Buffer.allocUnsafe(entryHeaderBytes);
  h.fill(0);
  h.writeUInt32BE(0x4a524e4c, 0);
  h.writeUInt32BE(seq >>> 0, 4);
  h.writeDoubleBE(offsetBytes, 8);
  h.writeUInt32BE(payload.length, 16);
  h.writeUInt32BE(crc, 20);
  h.writeUInt32BE(crc32(h.subarray(0, 60)), 60);
  const need = entryHeaderBytes + payload.length;
  if (ringPos + need > cacheBytes) ringPos = 0;
  writevSync(cacheFd, [h, payload], ringPos);
  ringPos += (need + 4095) & ~4095;
  sinceSyncBytes += need;
  if (sinceSyncBytes >= syncEveryBytes && !syncing) {
    sinceSyncBytes = 0;
    syncing = true;
    fdatasync(storageFd, () => (syncing = false));
  }
}

function store(offsetBytes, payload) {
  let done = 0;
  while (done < payload.length) done += writeSync(storageFd, payload, done, payload.length - done, offsetBytes + done);
}

/** Corks `socket` at the first write of a turn and uncorks it once, at the end of the turn. */
function corkedWriter(socket) {
  let corked = false;
  const uncork = () => {
    corked = false;
    socket.uncork();
  };
  return (buf) => {
    if (!corked) {
      corked = true;
      socket.cork();
      setImmediate(uncork);
    }
    socket.write(buf);
  };
}

/** Splits a byte stream into [header, body] pieces: `headerOf` says how long the body is. */
function framer(headerBytes, bodyBytesOf, onFrame) {
  let head = Buffer.alloc(0);
  let body;
  let bodyFilled = 0;
  let header;
  return (chunk) => {
    let pos = 0;
    while (pos < chunk.length) {
      if (body === undefined) {
        if (head.length === 0 && chunk.length - pos >= headerBytes) {
          header = chunk.subarray(pos, pos + headerBytes);
          pos += headerBytes;
        } else {
          const n = Math.min(headerBytes - head.length, chunk.length - pos);
          head = Buffer.concat([head, chunk.subarray(pos, pos + n)]);
          pos += n;
          if (head.length < headerBytes) return;
          header = head;
          head = Buffer.alloc(0);
        }
        const want = bodyBytesOf(header);
        if (want === 0) {
          onFrame(header, undefined);
          continue;
        }
        if (chunk.length - pos >= want) {
          onFrame(header, chunk.subarray(pos, pos + want));
          pos += want;
          continue;
        }
        body = Buffer.allocUnsafe(want);
        bodyFilled = 0;
      }
      const n = Math.min(body.length - bodyFilled, chunk.length - pos);
      chunk.copy(body, bodyFilled, pos, pos + n);
      bodyFilled += n;
      pos += n;
      if (bodyFilled < body.length) return;
      const b = body;
      body = undefined;
      onFrame(header, b);
    }
  };
}

function frameHeader(type, seq, offsetBytes, lengthBytes, crc) {
  const h = Buffer.allocUnsafe(frameHeaderBytes);
  h.writeUInt32BE(frameMagic, 0);
  h.writeUInt32BE(type, 4);
  h.writeUInt32BE(seq >>> 0, 8);
  h.writeDoubleBE(offsetBytes, 12);
  h.writeUInt32BE(lengthBytes, 20);
  h.writeUInt32BE(crc, 24);
  h.writeUInt32BE(0, 28);
  return h;
}

// ---- mirror ------------------------------------------------------------------------------------

function runMirror(port) {
  const server = createServer({ noDelay: true }, (socket) => {
    const send = corkedWriter(socket);
    let acked = -1;
    const feed = framer(frameHeaderBytes, (h) => (h.readUInt32BE(4) === F_WRITE ? h.readUInt32BE(20) : 0), (h, body) => {
      if (h.readUInt32BE(0) !== frameMagic) throw new Error('floor mirror: bad frame magic');
      const type = h.readUInt32BE(4);
      const seq = h.readUInt32BE(8);
      if (type === F_WRITE) {
        const crc = crc32(body) >>> 0;
        if (crc !== h.readUInt32BE(24)) throw new Error(`floor mirror: payload CRC mismatch at seq ${seq}`);
        const offsetBytes = h.readDoubleBE(12);
        journal(seq, offsetBytes, body, crc);
        store(offsetBytes, body);
        acked = seq;
      } else if (type === F_FLUSH) {
        fdatasync(storageFd, (err) => send(frameHeader(F_FLUSH_ACK, seq, 0, err ? 1 : 0, 0)));
      }
    });
    socket.on('data', (chunk) => {
      const before = acked;
      feed(chunk);
      if (acked !== before) send(frameHeader(F_ACK, acked, 0, 0, 0)); // one cumulative ACK per chunk
    });
    socket.on('error', () => socket.destroy());
  });
  server.listen(port, '127.0.0.1');
}

// ---- primary -----------------------------------------------------------------------------------

const NBD_OPT_EXPORT_NAME = 1;
const NBD_OPT_ABORT = 2;
const NBD_OPT_INFO = 6;
const NBD_OPT_GO = 7;
const NBD_REP_ACK = 1;
const NBD_REP_INFO = 3;
const NBD_REP_ERR_UNSUP = 0x80000001;
const NBD_CMD_READ = 0;
const NBD_CMD_WRITE = 1;
const NBD_CMD_DISC = 2;
const NBD_CMD_FLUSH = 3;
const transmissionFlags = 1 | 4; // HAS_FLAGS | SEND_FLUSH
const optReplyMagic = Buffer.from('0003e889045565a9', 'hex');

function runPrimary(nbdPort, mirrorPorts) {
  let seq = 0;
  /** Writes waiting for both mirrors, in seq order: { seq, reply }. */
  const waiting = [];
  let waitingFirst = 0;
  const mirrors = mirrorPorts.map((port) => {
    const socket = connect({ port, host: '127.0.0.1', noDelay: true });
    const m = { socket, send: corkedWriter(socket), acked: -1, flushes: [] };
    const feed = framer(frameHeaderBytes, () => 0, (h) => {
      const type = h.readUInt32BE(4);
      if (type === F_ACK) {
        m.acked = h.readUInt32BE(8);
        complete();
      } else if (type === F_FLUSH_ACK) {
        m.flushes.shift()?.();
      }
    });
    socket.on('data', feed);
    socket.on('error', (err) => {
      process.stderr.write(`floor primary: mirror ${port}: ${err.message}\n`);
      process.exit(1);
    });
    return m;
  });
  function complete() {
    let low = Infinity;
    for (const m of mirrors) low = Math.min(low, m.acked);
    while (waitingFirst < waiting.length && waiting[waitingFirst].seq <= low) waiting[waitingFirst++].reply();
    if (waitingFirst > 1024 && waitingFirst * 2 > waiting.length) {
      waiting.splice(0, waitingFirst);
      waitingFirst = 0;
    }
  }

  const server = createServer({ noDelay: true }, (socket) => {
    const send = corkedWriter(socket);
    const simpleReply = (cookie, error) => {
      const r = Buffer.allocUnsafe(16);
      r.writeUInt32BE(0x67446698, 0);
      r.writeUInt32BE(error, 4);
      cookie.copy(r, 8);
      return r;
    };
    // Handshake: fixed newstyle, options until GO or EXPORT_NAME.
    socket.write(Buffer.concat([Buffer.from('NBDMAGICIHAVEOPT'), Buffer.from([0, 3])]));
    let stage = 'clientFlags';
    let transmission;
    const optReply = (option, type, data = Buffer.alloc(0)) => {
      const h = Buffer.alloc(20);
      optReplyMagic.copy(h, 0);
      h.writeUInt32BE(option, 8);
      h.writeUInt32BE(type >>> 0, 12);
      h.writeUInt32BE(data.length, 16);
      socket.write(Buffer.concat([h, data]));
    };
    const exportInfo = () => {
      const d = Buffer.alloc(12);
      d.writeUInt16BE(0, 0); // NBD_INFO_EXPORT
      d.writeBigUInt64BE(BigInt(sizeBytes), 2);
      d.writeUInt16BE(transmissionFlags, 10);
      return d;
    };
    let pending = Buffer.alloc(0);
    const onHandshake = (chunk) => {
      pending = Buffer.concat([pending, chunk]);
      for (;;) {
        if (stage === 'clientFlags') {
          if (pending.length < 4) return;
          pending = pending.subarray(4);
          stage = 'options';
          continue;
        }
        if (pending.length < 16) return;
        const option = pending.readUInt32BE(8);
        const len = pending.readUInt32BE(12);
        if (pending.length < 16 + len) return;
        pending = pending.subarray(16 + len);
        if (option === NBD_OPT_EXPORT_NAME) {
          const d = Buffer.alloc(10);
          d.writeBigUInt64BE(BigInt(sizeBytes), 0);
          d.writeUInt16BE(transmissionFlags, 8);
          socket.write(d);
          return enterTransmission();
        }
        if (option === NBD_OPT_GO || option === NBD_OPT_INFO) {
          optReply(option, NBD_REP_INFO, exportInfo());
          optReply(option, NBD_REP_ACK);
          if (option === NBD_OPT_GO) return enterTransmission();
          continue;
        }
        if (option === NBD_OPT_ABORT) {
          optReply(option, NBD_REP_ACK);
          socket.end();
          return;
        }
        optReply(option, NBD_REP_ERR_UNSUP);
      }
    };
    const enterTransmission = () => {
      const rest = pending;
      pending = Buffer.alloc(0);
      stage = 'transmission';
      transmission = framer(28, (h) => (h.readUInt16BE(6) === NBD_CMD_WRITE ? h.readUInt32BE(24) : 0), onRequest);
      if (rest.length > 0) transmission(rest);
    };
    const onRequest = (h, body) => {
      const type = h.readUInt16BE(6);
      const cookie = Buffer.from(h.subarray(8, 16));
      const offsetBytes = Number(h.readBigUInt64BE(16));
      const lengthBytes = h.readUInt32BE(24);
      if (type === NBD_CMD_WRITE) {
        const s = seq++;
        const crc = crc32(body) >>> 0;
        journal(s, offsetBytes, body, crc);
        const fh = frameHeader(F_WRITE, s, offsetBytes, body.length, crc);
        for (const m of mirrors) {
          m.send(fh);
          m.send(body);
        }
        store(offsetBytes, body);
        waiting.push({ seq: s, reply: () => send(simpleReply(cookie, 0)) });
      } else if (type === NBD_CMD_READ) {
        const out = Buffer.alloc(lengthBytes);
        let done = 0;
        while (done < lengthBytes) {
          const n = readSync(storageFd, out, done, lengthBytes - done, offsetBytes + done);
          if (n === 0) break; // past the end of the file: zeroes
          done += n;
        }
        send(simpleReply(cookie, 0));
        send(out);
      } else if (type === NBD_CMD_FLUSH) {
        let left = mirrors.length + 1;
        const one = () => {
          if (--left === 0) send(simpleReply(cookie, 0));
        };
        for (const m of mirrors) {
          m.flushes.push(one);
          m.send(frameHeader(F_FLUSH, 0, 0, 0, 0));
        }
        fdatasync(storageFd, one);
      } else if (type === NBD_CMD_DISC) {
        socket.end();
      } else {
        send(simpleReply(cookie, 22)); // EINVAL
      }
    };
    socket.on('data', (chunk) => (stage === 'transmission' ? transmission(chunk) : onHandshake(chunk)));
    socket.on('error', () => socket.destroy());
  });
  server.listen(nbdPort, '127.0.0.1');
}

if (role === 'mirror') runMirror(Number(portText));
else {
  if (mirrorText === undefined) throw new Error('floor primary: name the mirror ports');
  runPrimary(Number(portText), mirrorText.split(',').map(Number));
}
const stop = () => {
  closeSync(cacheFd);
  closeSync(storageFd);
  process.exit(0);
};
process.once('SIGTERM', stop);
process.once('SIGINT', stop);
