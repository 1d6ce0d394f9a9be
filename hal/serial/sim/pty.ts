// Runs the serial device simulator at the far end of a real pseudo-terminal pair made by socat,
// for tests, benches and one-machine demos. The host then opens the REAL adapter on the near
// end (`serial:<hostPath>`): only the device is simulated, the tty path is the kernel's.
//
// SIMULATOR plumbing: needs `socat` (installed by .ci/run).

import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';

// The simulator next to this module: compiled JavaScript when this runs from dist/, else the
// TypeScript source through tsx (a dev dependency), from the repository root so it resolves.
const compiled = import.meta.url.endsWith('.js');
const simScript = fileURLToPath(new URL(compiled ? './device-sim.js' : './device-sim.ts', import.meta.url));
const simNodeArgs = compiled ? [] : ['--import', 'tsx'];
const simCwd = fileURLToPath(new URL(compiled ? '.' : '../../../', import.meta.url));
/** How long socat and the simulator may take to come up before we give up (ms). */
export const ptyStartTimeoutMs = 15_000;

export interface SerialSimOptions {
  /** Directory for the pty links (and the disk, unless diskPath is given). */
  dir: string;
  diskPath?: string;
  blockSizeBytes: number;
  blockCount: number;
  readOnly?: boolean;
  payloadBytesMax?: number;
  /** Test hook: reads touching this LBA fail with MEDIUM ERROR inside the simulated device. */
  mediumErrorLba?: number;
}

export interface SerialSim {
  /** The pty the host opens: `serial:${hostPath}`. */
  hostPath: string;
  diskPath: string;
  stop(): Promise<void>;
}

export async function startSerialSim(o: SerialSimOptions): Promise<SerialSim> {
  const hostPath = join(o.dir, 'host.pty');
  const devPath = join(o.dir, 'device.pty');
  const diskPath = o.diskPath ?? join(o.dir, 'serial-disk.img');
  const children: ChildProcess[] = [];
  let stopping = false;
  const stop = async () => {
    stopping = true;
    for (const c of children.reverse()) await killAndWait(c);
  };
  try {
    const socat = spawn('socat', ['-d', '-d', `pty,raw,echo=0,link=${hostPath}`, `pty,raw,echo=0,link=${devPath}`], { stdio: ['ignore', 'ignore', 'pipe'] });
    children.push(socat);
    let spawnError: Error | undefined;
    socat.on('error', (e) => (spawnError = e)); // ENOENT: socat is not installed
    await waitFor(() => {
      if (spawnError) throw new Error(`cannot run socat (${spawnError.message}); install it (apt-get install socat)`);
      return existsSync(hostPath) && existsSync(devPath);
    }, socat, 'socat pty pair');
    const args = [...simNodeArgs, simScript, '--port', devPath, '--disk', diskPath, '--block-size', String(o.blockSizeBytes), '--blocks', String(o.blockCount), '--create'];
    if (o.readOnly) args.push('--read-only');
    if (o.mediumErrorLba !== undefined) args.push('--medium-error-lba', String(o.mediumErrorLba));
    if (o.payloadBytesMax) args.push('--payload-bytes-max', String(o.payloadBytesMax));
    const sim = spawn(process.execPath, args, { cwd: simCwd, stdio: ['ignore', 'pipe', 'pipe'] });
    children.push(sim);
    let out = '';
    let err = '';
    sim.stdout!.on('data', (d: Buffer) => (out += d.toString()));
    sim.stderr!.on('data', (d: Buffer) => (err += d.toString()));
    await waitFor(() => out.includes('ready'), sim, () => `serial simulator (${err.trim() || 'no output'})`);
    sim.on('exit', (code, sig) => {
      if (!stopping) process.stderr.write(`serial simulator on ${devPath} exited early (code ${code}, signal ${sig}): ${err.trim()}\n`);
    });
  } catch (e) {
    await stop();
    throw e;
  }
  return { hostPath, diskPath, stop };
}

async function waitFor(ok: () => boolean, child: ChildProcess, what: string | (() => string)): Promise<void> {
  const deadline = Date.now() + ptyStartTimeoutMs;
  const name = () => (typeof what === 'string' ? what : what());
  while (!ok()) {
    if (child.exitCode !== null) throw new Error(`${name()} exited with code ${child.exitCode} before it was ready`);
    if (Date.now() > deadline) throw new Error(`${name()} not ready after ${ptyStartTimeoutMs} ms`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

async function killAndWait(c: ChildProcess): Promise<void> {
  if (c.exitCode !== null || c.signalCode !== null) return;
  const done = new Promise<void>((r) => c.once('exit', () => r()));
  c.kill('SIGTERM');
  const t = setTimeout(() => c.kill('SIGKILL'), 3000);
  await done;
  clearTimeout(t);
}
