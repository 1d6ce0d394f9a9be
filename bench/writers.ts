// Host-side load for the failover benches (bench/failover.ts, bench/fleet.ts): endless 4 KiB
// writes at random block-aligned offsets over the harness's NbdWriter, a fixed number in flight,
// and a reconnect loop that waits for an export to appear (a standby's export opens when it is
// promoted).
import { NbdWriter, prng, sleep, type PlannedWrite } from '../test/e2e/harness.js';

/** Pause between attempts to reach an export that is not (yet) served. */
export const reconnectPauseMs = 20;

/** Endless 4 KiB writes at random block-aligned offsets (distinct content per write). */
export function writesForever(volumeBytes: number, seed: number): () => PlannedWrite {
  const rnd = prng(seed);
  let index = 0;
  return () => {
    const data = Buffer.alloc(4096, index & 0xff);
    data.writeUInt32LE(index, 0);
    return { index: index++, offsetBytes: Math.floor(rnd() * (volumeBytes / 4096)) * 4096, data };
  };
}

/** Connects to export `name` on 127.0.0.1:`port`, retrying until `deadlineMs` (wall clock). */
export async function connectBy(port: number, deadlineMs: number, name = 'vol0'): Promise<NbdWriter> {
  for (;;) {
    try {
      return await NbdWriter.connect(port, name);
    } catch (err) {
      if (Date.now() > deadlineMs) throw new Error(`export ${name} on 127.0.0.1:${port} not reachable: ${(err as Error).message}`);
      await sleep(reconnectPauseMs);
    }
  }
}

/**
 * Keeps `depth` writes from `next` in flight on `w` until `stop()` turns true or a write fails
 * (the server went away or refused it). Resolves once nothing is in flight any more, with the
 * first write error (undefined: stopped by `stop()` with every write acked).
 */
export async function keepWriting(w: NbdWriter, next: () => PlannedWrite, depth: number, stop: () => boolean): Promise<Error | undefined> {
  const inflight = new Set<Promise<void>>();
  let failed: Error | undefined;
  while (!stop() && !failed) {
    while (inflight.size < depth && !stop() && !failed) {
      const p: Promise<void> = w.write(next()).catch((err: Error) => {
        failed ??= err;
      });
      inflight.add(p);
      void p.finally(() => inflight.delete(p));
    }
    await Promise.race(inflight);
  }
  await Promise.allSettled(inflight);
  return failed;
}

/**
 * Writes one block to export `name` as soon as it takes writes: connects (retrying while the
 * export is absent) and writes; a refused or dropped write starts over. Resolves with the
 * wall-clock time of the ack.
 */
export async function firstAckedWrite(port: number, name: string, next: () => PlannedWrite, deadlineMs: number): Promise<number> {
  for (;;) {
    const w = await connectBy(port, deadlineMs, name);
    try {
      await w.write(next());
      return Date.now();
    } catch (err) {
      if (Date.now() > deadlineMs) throw new Error(`export ${name} on 127.0.0.1:${port} takes no write: ${(err as Error).message}`);
      await sleep(reconnectPauseMs);
    } finally {
      w.close();
    }
  }
}
