// WAN link emulator (issue 7 item 5): these kernels have no netem, so a TCP proxy placed between
// two sites adds one-way latency and a bandwidth cap per direction, and drops, partitions and
// heals on command. In-process API for tests and benches; it binds to 127.0.0.1 only.
//
// Model: each direction is a FIFO of chunks; a chunk leaves at
//   max(arrival + oneWayLatencyMs, previous departure + bytes / bandwidth)
// so latency and serialisation delay add like on a real link and order is kept. A partition
// is a black hole (bytes vanish, the sockets stay open, so the sites find out the way they would
// on a WAN: their link timeout); heal() then resets the black-holed connections (a TCP stream
// with a gap cannot continue) and new connections flow again. drop() resets every connection
// once (a flap).
import net from 'node:net';

/** Light in fibre covers about 200 km per ms: ~5 us of one-way latency per km. */
export const fibreLatencyMsPerKm = 0.005;

export function latencyFromDistanceMs(distanceKm: number): number {
  return distanceKm * fibreLatencyMsPerKm;
}

export interface WanProxyOptions {
  /** Where the proxy forwards to (the downstream site's listen address). */
  targetHost: string;
  targetPort: number;
  /** Port to listen on (127.0.0.1); 0 picks a free one. */
  listenPort?: number;
  oneWayLatencyMs?: number;
  /** Per direction; undefined: no cap. */
  bandwidthBytesPerSec?: number;
}

interface Pipe {
  readonly client: net.Socket;
  readonly server: net.Socket;
  blackholed: boolean;
}

/** Upper bound of bytes queued in one direction before the source socket is paused. */
const queuedBytesMax = 64 * 1024 * 1024;

export class WanProxy {
  private readonly srv: net.Server;
  private readonly pipes = new Set<Pipe>();
  private partitioned = false;
  oneWayLatencyMs: number;
  bandwidthBytesPerSec: number | undefined;
  readonly stats = { connections: 0, bytesForwarded: 0, bytesDropped: 0 };
  /** When set, every chunk seen in either direction is kept here (what an on-path observer sees). */
  recorded: Buffer[] | undefined;
  /**
   * On-path attacker hook: sees each chunk ('up' = dialer -> listener) before it is queued and
   * returns what to forward instead (a flipped byte, an injected frame...).
   */
  tamper: ((dir: 'up' | 'down', chunk: Buffer) => Buffer) | undefined;

  private constructor(private readonly opts: WanProxyOptions) {
    this.oneWayLatencyMs = opts.oneWayLatencyMs ?? 0;
    this.bandwidthBytesPerSec = opts.bandwidthBytesPerSec;
    this.srv = net.createServer((client) => this.onClient(client));
  }

  static async start(opts: WanProxyOptions): Promise<WanProxy> {
    if (opts.oneWayLatencyMs !== undefined && !(opts.oneWayLatencyMs >= 0)) throw new Error(`wan proxy: oneWayLatencyMs ${opts.oneWayLatencyMs} must be >= 0`);
    if (opts.bandwidthBytesPerSec !== undefined && !(opts.bandwidthBytesPerSec > 0)) throw new Error(`wan proxy: bandwidthBytesPerSec ${opts.bandwidthBytesPerSec} must be > 0`);
    const p = new WanProxy(opts);
    await new Promise<void>((res, rej) => {
      p.srv.once('error', rej);
      p.srv.listen(opts.listenPort ?? 0, '127.0.0.1', () => res());
    });
    return p;
  }

  get port(): number {
    return (this.srv.address() as net.AddressInfo).port;
  }

  /** Black-hole both directions from now on (existing and new connections). */
  partition(): void {
    this.partitioned = true;
    for (const p of this.pipes) p.blackholed = true;
  }

  /** End a partition: black-holed connections are reset, new ones flow. */
  heal(): void {
    this.partitioned = false;
    for (const p of [...this.pipes]) if (p.blackholed) this.kill(p);
  }

  /** Writes `bytes` into every live connection, as if the sender had sent them (injection). */
  inject(dir: 'up' | 'down', bytes: Buffer): number {
    let n = 0;
    for (const p of this.pipes) {
      const to = dir === 'up' ? p.server : p.client;
      if (!p.blackholed && !to.destroyed) {
        to.write(bytes);
        n++;
      }
    }
    return n;
  }

  /** Reset every connection once (both sites see the link drop and reconnect). */
  drop(): void {
    for (const p of [...this.pipes]) this.kill(p);
  }

  get isPartitioned(): boolean {
    return this.partitioned;
  }

  async close(): Promise<void> {
    for (const p of [...this.pipes]) this.kill(p);
    await new Promise<void>((res) => this.srv.close(() => res()));
  }

  private kill(p: Pipe): void {
    this.pipes.delete(p);
    p.client.destroy();
    p.server.destroy();
  }

  private onClient(client: net.Socket): void {
    this.stats.connections++;
    const server = net.connect({ host: this.opts.targetHost, port: this.opts.targetPort });
    const p: Pipe = { client, server, blackholed: this.partitioned };
    this.pipes.add(p);
    client.setNoDelay(true);
    server.setNoDelay(true);
    const end = () => {
      if (!this.pipes.has(p)) return;
      // A black hole keeps the other side open: it must notice by itself (timeout).
      if (p.blackholed) return;
      this.kill(p);
    };
    client.on('error', end).on('close', end);
    server.on('error', end).on('close', end);
    this.direction(p, client, server);
    this.direction(p, server, client);
  }

  /** One direction: delay each chunk, keep order (one queue, one timer), cap the rate, pause the source when far behind. */
  private direction(p: Pipe, from: net.Socket, to: net.Socket): void {
    let lastDepartMs = 0;
    let queuedBytes = 0;
    const queue: { departMs: number; chunk: Buffer }[] = [];
    let timer: NodeJS.Timeout | undefined;
    const pump = () => {
      timer = undefined;
      const nowMs = performance.now();
      while (queue.length > 0 && queue[0]!.departMs <= nowMs + 0.5) {
        const { chunk } = queue.shift()!;
        queuedBytes -= chunk.byteLength;
        if (p.blackholed || to.destroyed) {
          this.stats.bytesDropped += chunk.byteLength;
          continue;
        }
        this.stats.bytesForwarded += chunk.byteLength;
        to.write(chunk);
      }
      if (from.isPaused() && queuedBytes <= queuedBytesMax / 2) from.resume();
      if (queue.length > 0) timer = setTimeout(pump, Math.max(0, queue[0]!.departMs - nowMs));
    };
    const dir: 'up' | 'down' = from === p.client ? 'up' : 'down';
    from.on('data', (seen: Buffer) => {
      this.recorded?.push(Buffer.from(seen));
      const chunk = this.tamper ? this.tamper(dir, seen) : seen;
      if (p.blackholed) {
        this.stats.bytesDropped += chunk.byteLength;
        return;
      }
      const nowMs = performance.now();
      const serialMs = this.bandwidthBytesPerSec === undefined ? 0 : (chunk.byteLength * 1000) / this.bandwidthBytesPerSec;
      const departMs = Math.max(nowMs + this.oneWayLatencyMs, lastDepartMs + serialMs);
      lastDepartMs = departMs;
      queuedBytes += chunk.byteLength;
      queue.push({ departMs, chunk });
      if (queuedBytes > queuedBytesMax) from.pause();
      if (timer === undefined) {
        if (departMs <= nowMs) pump();
        else timer = setTimeout(pump, departMs - nowMs);
      }
    });
    from.on('close', () => {
      if (timer !== undefined && (p.blackholed || to.destroyed)) clearTimeout(timer);
    });
  }
}
