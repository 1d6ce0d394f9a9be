// The dialing side: keeps one authenticated link to one peer, reconnecting forever with
// exponential backoff and jitter until stopped (a mirror that reboots, a WAN that drops).
// While the peer stays down the log gets its first failure, then at most one summary line per
// downLogIntervalMs with the count of failed attempts (not a line every backoff).
import { randomBytes as cryptoRandomBytes } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { connect, type Socket } from 'node:net';
import { ErrorCode } from '../wire/index.js';
import { systemClock, type Clock, type TimerHandle } from './clock.js';
import { Link, silentLogger, type LinkClose, type LinkLogger, type LinkTimingOptions } from './link.js';
import type { LinkSecurity } from './security.js';

/** While a peer stays unreachable, at most one log line per this interval. */
export const downLogIntervalMsDefault = 60_000;

export interface DialerOptions extends LinkTimingOptions {
  readonly cluster: string;
  readonly site: string;
  readonly secret: Buffer;
  /** TLS or lab-mode plain TCP, built once per site (src/net/security.ts). */
  readonly security: LinkSecurity;
  /** Rate limit of the "still down" log line (first failure always logged). */
  readonly downLogIntervalMs?: number;
  /** The site dialed, and where it listens. */
  readonly peer: string;
  readonly host: string;
  readonly port: number;
  readonly backoffMsMin?: number;
  readonly backoffMsMax?: number;
  /** Uniform [0, 1) for jitter; injectable for reproducible tests. */
  readonly random?: () => number;
}

export interface Dialer {
  on(event: 'link', fn: (link: Link) => void): this;
  on(event: 'attempt-failed', fn: (info: { attempt: number; reason: string; retryInMs: number }) => void): this;
  once(event: 'link', fn: (link: Link) => void): this;
  once(event: 'attempt-failed', fn: (info: { attempt: number; reason: string; retryInMs: number }) => void): this;
}

export class Dialer extends EventEmitter {
  private readonly clock: Clock;
  private readonly log: LinkLogger;
  private readonly random: () => number;
  readonly backoffMsMin: number;
  readonly backoffMsMax: number;
  private stopped = true;
  private attempt = 0;
  private retryTimer: TimerHandle | undefined;
  private socket: Socket | undefined;
  private current: Link | undefined;
  /** Failures since the last log line about this peer being down, and when that line was. */
  private failuresUnlogged = 0;
  private downLoggedMs: number | undefined;
  readonly downLogIntervalMs: number;

  constructor(private readonly o: DialerOptions) {
    super();
    this.clock = o.clock ?? systemClock;
    this.log = o.logger ?? silentLogger;
    this.random = o.random ?? Math.random;
    this.backoffMsMin = o.backoffMsMin ?? 100;
    this.backoffMsMax = o.backoffMsMax ?? 10_000;
    this.downLogIntervalMs = o.downLogIntervalMs ?? downLogIntervalMsDefault;
    if (!(this.backoffMsMin > 0 && this.backoffMsMax >= this.backoffMsMin)) {
      throw new RangeError(`dialer to '${o.peer}': need 0 < backoffMsMin (${this.backoffMsMin}) <= backoffMsMax (${this.backoffMsMax})`);
    }
  }

  /** The current established link, if any. */
  get link(): Link | undefined {
    return this.current?.state === 'established' ? this.current : undefined;
  }

  start(): void {
    if (!this.stopped) return;
    this.stopped = false;
    this.dial();
  }

  /** Stops reconnecting and closes the current connection with SHUTDOWN. */
  stop(): void {
    this.stopped = true;
    if (this.retryTimer !== undefined) this.clock.clearTimeout(this.retryTimer);
    this.retryTimer = undefined;
    if (this.current !== undefined && this.current.state !== 'closed') {
      this.current.close(ErrorCode.SHUTDOWN, `site '${this.o.site}' stopped dialing '${this.o.peer}'`);
    }
    this.socket?.destroy();
  }

  /** Delay before reconnect attempt n (1-based): exponential, capped, with 50..100% jitter. */
  backoffMs(attempt: number): number {
    const base = Math.min(this.backoffMsMax, this.backoffMsMin * 2 ** Math.min(attempt - 1, 30));
    return Math.round(base * (0.5 + 0.5 * this.random()));
  }

  private dial(): void {
    if (this.stopped) return;
    const socket = connect({ host: this.o.host, port: this.o.port });
    this.socket = socket;
    let settled = false;
    const connectTimer = this.clock.setTimeout(() => {
      if (settled) return;
      settled = true;
      socket.destroy();
      this.retry(`no TCP connection to ${this.o.host}:${this.o.port} within ${this.o.handshakeTimeoutMs ?? 5000} ms`);
    }, this.o.handshakeTimeoutMs ?? 5000);
    socket.once('error', (err) => {
      if (settled) return;
      settled = true;
      this.clock.clearTimeout(connectTimer);
      this.retry(`cannot connect to ${this.o.host}:${this.o.port}: ${err.message}`);
    });
    socket.once('connect', () => {
      if (settled) return;
      settled = true;
      this.clock.clearTimeout(connectTimer);
      if (this.stopped) {
        socket.destroy();
        return;
      }
      const link = new Link(socket, { ...this.o, role: 'dialer', randomBytes: this.o.randomBytes ?? cryptoRandomBytes });
      this.current = link;
      link.once('established', () => {
        if (this.downLoggedMs !== undefined) {
          this.log.info({ site: this.o.site, peer: this.o.peer, attempts: this.attempt }, `link to peer back after ${this.attempt} failed attempt(s)`);
        }
        this.attempt = 0;
        this.failuresUnlogged = 0;
        this.downLoggedMs = undefined;
        this.emit('link', link);
      });
      link.once('close', (info: LinkClose) => {
        if (this.current === link) this.current = undefined;
        this.retry(info.reason);
      });
    });
  }

  /** First failure: one line; then one summary per downLogIntervalMs with the count and last reason. */
  private logDown(reason: string, retryInMs: number): void {
    const now = this.clock.nowMs();
    this.failuresUnlogged++;
    const fields = { site: this.o.site, peer: this.o.peer, address: `${this.o.host}:${this.o.port}`, attempt: this.attempt, retryInMs, reason };
    if (this.downLoggedMs === undefined) {
      this.log.warn(fields, 'link to peer down; reconnecting');
    } else if (now - this.downLoggedMs >= this.downLogIntervalMs) {
      this.log.warn({ ...fields, failedAttempts: this.failuresUnlogged, sinceMs: Math.round(now - this.downLoggedMs) }, `link to peer still down: ${this.failuresUnlogged} failed attempt(s) since the last report; reconnecting`);
    } else {
      return;
    }
    this.downLoggedMs = now;
    this.failuresUnlogged = 0;
  }

  private retry(reason: string): void {
    if (this.stopped) return;
    this.attempt++;
    const retryInMs = this.backoffMs(this.attempt);
    this.logDown(reason, retryInMs);
    this.emit('attempt-failed', { attempt: this.attempt, reason, retryInMs });
    this.retryTimer = this.clock.setTimeout(() => {
      this.retryTimer = undefined;
      this.dial();
    }, retryInMs);
  }
}

