// A real etcd for tests (Debian's etcd-server, /usr/bin/etcd): one member on 127.0.0.1 with free
// ports and a temp data dir, started, killed (kill -9) and started again on the same data dir.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { createWriteStream, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../net/helpers.js';

/** Bound on waiting for etcd to answer after a start. */
const readyMsMax = 30_000;

export function haveEtcd(): boolean {
  return spawnSync('sh', ['-c', 'command -v etcd && command -v etcdctl'], { stdio: 'ignore' }).status === 0;
}

export class TestEtcd {
  private child: ChildProcess | undefined;
  private exited: Promise<void> | undefined;
  private lives = 0;

  private constructor(
    readonly dir: string,
    readonly clientPort: number,
    readonly peerPort: number,
  ) {}

  get endpoint(): string {
    return `http://127.0.0.1:${this.clientPort}`;
  }

  get logPath(): string {
    return join(this.dir, 'etcd.log');
  }

  static async start(): Promise<TestEtcd> {
    const e = new TestEtcd(mkdtempSync(join(tmpdir(), 'geomirror-etcd-')), await freePort(), await freePort());
    await e.restart();
    return e;
  }

  /** Starts etcd on the same data dir (a restart keeps keys and leases: etcd restores leases with a fresh TTL). */
  async restart(): Promise<void> {
    if (this.child !== undefined) throw new Error('etcd is running already');
    const peer = `http://127.0.0.1:${this.peerPort}`;
    const log = createWriteStream(this.logPath, { flags: 'a' });
    log.write(`----- life ${++this.lives} -----\n`);
    const child = spawn('etcd', [
      '--name', 'gm', '--data-dir', join(this.dir, 'data'),
      '--listen-client-urls', this.endpoint, '--advertise-client-urls', this.endpoint,
      '--listen-peer-urls', peer, '--initial-advertise-peer-urls', peer, '--initial-cluster', `gm=${peer}`,
      '--log-level', 'warn',
    ], { stdio: ['ignore', 'pipe', 'pipe'], env: { ...process.env, ...(process.arch === 'arm64' ? { ETCD_UNSUPPORTED_ARCH: 'arm64' } : {}) } });
    child.stdout!.pipe(log, { end: false });
    child.stderr!.pipe(log, { end: false });
    this.child = child;
    this.exited = new Promise((r) => child.once('exit', () => r()));
    const deadline = Date.now() + readyMsMax;
    for (;;) {
      const h = spawnSync('etcdctl', ['--endpoints', this.endpoint, '--dial-timeout', '1s', '--command-timeout', '1s', 'endpoint', 'health'], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8' });
      if (h.status === 0) return;
      if (child.exitCode !== null || Date.now() > deadline) throw new Error(`etcd did not come up on ${this.endpoint}: ${h.stderr}\n${this.logTail()}`);
      await new Promise((r) => setTimeout(r, 100));
    }
  }

  /** kill -9 (etcd down for everyone). */
  async kill(): Promise<void> {
    const c = this.child;
    if (c === undefined) return;
    c.kill('SIGKILL');
    await this.exited;
    this.child = undefined;
  }

  /** `etcdctl get KEY` (value, or undefined when absent). */
  get(key: string): string | undefined {
    const r = spawnSync('etcdctl', ['--endpoints', this.endpoint, 'get', key, '--print-value-only'], { env: { ...process.env, ETCDCTL_API: '3' }, encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`etcdctl get ${key}: ${r.stderr}`);
    const v = r.stdout.replace(/\n$/, '');
    return v === '' ? undefined : v;
  }

  logTail(lines = 30): string {
    try {
      return `--- etcd log ---\n${readFileSync(this.logPath, 'utf8').split('\n').slice(-lines).join('\n')}`;
    } catch {
      return '';
    }
  }

  async destroy(): Promise<void> {
    await this.kill();
    rmSync(this.dir, { recursive: true, force: true });
  }
}
