// Reading a socket into one reused buffer (issue 18, build item 3: "reuse receive buffers").
//
// By default every read of a net.Socket allocates a fresh 64 KiB buffer, and a TLSSocket hands
// its cleartext to JavaScript in fresh 16 KiB buffers: 64 allocations, Buffer objects and
// external-memory charges per MiB received, garbage until the next scavenge. At 1 MiB writes
// they are most of a mirror's garbage, and the freed pieces fragment the C heap (a primary kept
// ~60 MiB more RSS after a 1 MiB run than before it; /proc/PID/smaps: the [heap] mapping).
//
// Node's `onread` option reads into a caller's buffer instead, but only where Node creates the
// socket itself (net.connect, tls.connect without `socket`): not for a server's accepted
// sockets nor for TLS wrapped over a connected socket, which is how every link and NBD
// connection is made. The stream machinery behind `onread` is the same for every socket
// (StreamBase.useUserBuffer plus two per-socket fields the read callback consults), so this
// module finds those two fields once, by constructing a probe socket with `onread` and looking
// for its values, and sets them on our sockets. Where the probe does not find them (another
// Node version), readInto() returns false and the caller stays on 'data' events: slower, never
// wrong. test/net/link.test.ts and tls.test.ts (sendWritesKeepAll) fail if the reused-buffer
// path is not active on the Node this project runs on, so an upgrade that loses it is seen.
//
// Contract for the callback: the bytes are valid only during the call; whatever the caller
// keeps it must copy (FrameParser.push with `transient`, NbdParser likewise).
import { Socket } from 'node:net';

type ReadCallback = (bytes: number, buffer: Buffer) => void;

interface Fields {
  readonly buffer: symbol;
  readonly callback: symbol;
}

let fields: Fields | null | undefined;

function probe(): Fields | null {
  const buffer = Buffer.alloc(1);
  const callback = (): boolean => true;
  let sock: Socket;
  try {
    sock = new Socket({ onread: { buffer, callback } } as ConstructorParameters<typeof Socket>[0]);
  } catch {
    return null;
  }
  let b: symbol | undefined;
  let c: symbol | undefined;
  for (const s of Object.getOwnPropertySymbols(sock)) {
    const v = (sock as unknown as Record<symbol, unknown>)[s];
    if (v === buffer) b = b === undefined ? s : undefined;
    else if (v === callback) c = c === undefined ? s : undefined;
  }
  sock.destroy();
  return b !== undefined && c !== undefined ? { buffer: b, callback: c } : null;
}

/** Whether this Node lets us read accepted and TLS-wrapped sockets into a reused buffer. */
export function readIntoSupported(): boolean {
  if (fields === undefined) fields = probe();
  return fields !== null;
}

/**
 * From now on, deliver what `socket` reads as (bytes, buffer) calls on `buffer` instead of
 * 'data' events. Call it right after the socket (or TLSSocket) is constructed, before the first
 * turn of the event loop. Returns false, changing nothing, where it cannot be done.
 */
export function readInto(socket: Socket, buffer: Buffer, onRead: ReadCallback): boolean {
  if (!readIntoSupported()) return false;
  const handle = (socket as unknown as { _handle?: { useUserBuffer?: (b: Uint8Array) => void } | null })._handle;
  if (handle === null || handle === undefined || typeof handle.useUserBuffer !== 'function') return false;
  const f = fields!;
  const s = socket as unknown as Record<symbol, unknown>;
  s[f.buffer] = buffer;
  // Returning true keeps reading; pause()/resume() stop and restart the handle as for 'data'.
  s[f.callback] = (bytes: number, buf: Buffer): boolean => {
    onRead(bytes, buf);
    return true;
  };
  handle.useUserBuffer(buffer);
  return true;
}
