// The site's small persistent records (src/site/persist.ts, src/site/history.ts) on real files
// in a temp folder: the meta record's sticky `acting` role (issue 10: a fenced old primary stays
// a mirror through every later save and restart) and the failover history's JSON lines.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { FailoverHistory } from '../../src/site/history.js';
import { fileMetaStore, freshMeta, memoryMetaStore } from '../../src/site/persist.js';
import type { FailoverRecord } from '../../src/site/status.js';

const dir = mkdtempSync(join(tmpdir(), 'geomirror-persist-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const fresh = (suffix: string): string => join(dir, `site${n++}${suffix}`);

describe('meta record: sticky acting', () => {
  it('keeps acting through saves without it, and across a restart (a new store on the same file)', async () => {
    const path = fresh('.cache.meta');
    const store = fileMetaStore(path);
    expect(await store.load()).toEqual(freshMeta);
    await store.save({ epoch: 1n, seqReserved: 100n });
    expect(await store.load()).toEqual({ epoch: 1n, seqReserved: 100n });
    await store.save({ epoch: 2n, seqReserved: 100n, acting: 'mirror' });
    await store.save({ epoch: 2n, seqReserved: 200n }); // the core persists without acting
    expect(await store.load()).toEqual({ epoch: 2n, seqReserved: 200n, acting: 'mirror' });
    expect(JSON.parse(readFileSync(path, 'utf8'))).toMatchObject({ epoch: '2', seqReserved: '200', acting: 'mirror' });

    const restarted = fileMetaStore(path);
    await restarted.save({ epoch: 2n, seqReserved: 300n }); // first save of a new life, before any load
    expect(await restarted.load()).toEqual({ epoch: 2n, seqReserved: 300n, acting: 'mirror' });
    await restarted.save({ epoch: 3n, seqReserved: 300n, acting: 'primary' }); // a later promotion replaces it
    await restarted.save({ epoch: 3n, seqReserved: 400n });
    expect(await fileMetaStore(path).load()).toEqual({ epoch: 3n, seqReserved: 400n, acting: 'primary' });
  });

  it('applies concurrent saves in issue order, keeping acting', async () => {
    const path = fresh('.cache.meta');
    const store = fileMetaStore(path);
    await Promise.all([
      store.save({ epoch: 1n, seqReserved: 10n }),
      store.save({ epoch: 2n, seqReserved: 20n, acting: 'mirror' }),
      store.save({ epoch: 2n, seqReserved: 30n }),
      store.save({ epoch: 2n, seqReserved: 40n }),
    ]);
    expect(await fileMetaStore(path).load()).toEqual({ epoch: 2n, seqReserved: 40n, acting: 'mirror' });
  });

  it('refuses an invalid acting value, naming the file', async () => {
    const path = fresh('.cache.meta');
    writeFileSync(path, JSON.stringify({ magic: 'geomirror-meta-v1', epoch: '2', seqReserved: '5', acting: 'relay' }));
    await expect(fileMetaStore(path).load()).rejects.toThrow(`${path}: acting is "relay"; expected primary, standby or mirror`);
    writeFileSync(path, JSON.stringify({ magic: 'geomirror-meta-v1', epoch: '2', seqReserved: '5', acting: 7 }));
    await expect(fileMetaStore(path).load()).rejects.toThrow(`${path}: acting is 7`);
  });

  it('keeps acting in the memory store too', async () => {
    const store = memoryMetaStore();
    await store.save({ epoch: 2n, seqReserved: 1n, acting: 'mirror' });
    await store.save({ epoch: 2n, seqReserved: 9n });
    expect(await store.load()).toEqual({ epoch: 2n, seqReserved: 9n, acting: 'mirror' });
  });
});

describe('failover history', () => {
  const rec = (at: string, kind: FailoverRecord['kind'], reason: string): FailoverRecord => ({ at, kind, site: 'backup', fromEpoch: 1, toEpoch: 2, lastSeq: '42', reason });

  it('appends JSON lines and loads them back in order; none without a file', async () => {
    const h = new FailoverHistory(fresh('.cache.failovers.jsonl'));
    expect(await h.load()).toEqual([]);
    const a = rec('2026-11-25T05:49:35.120Z', 'promoted', 'primary silent for 5000 ms; 2 of 3 votes');
    const b = rec('2026-11-25T06:00:00.000Z', 'demoted', 'planned switchover');
    await h.append(a);
    await h.append(b);
    expect(await h.load()).toEqual([a, b]);
    const none = new FailoverHistory(undefined);
    await none.append(a);
    expect(await none.load()).toEqual([]);
  });

  it('skips a torn last line, and the next append starts a line of its own', async () => {
    const path = fresh('.cache.failovers.jsonl');
    const h = new FailoverHistory(path);
    const a = rec('2026-11-25T05:49:35.120Z', 'promoted', 'silence');
    await h.append(a);
    writeFileSync(path, `${readFileSync(path, 'utf8')}{"at":"2026-11-25T05:50:00.000Z","kind":"fen`); // crash mid-append
    expect(await h.load()).toEqual([a]);
    const b = rec('2026-11-25T06:00:00.000Z', 'fenced', 'a peer is at epoch 3');
    await h.append(b);
    expect(await h.load()).toEqual([a, b]);
  });
});
