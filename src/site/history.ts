// Failover history of one site (issue 10 item 6): every promotion, fencing and demotion it took
// part in, one JSON line each, beside its cache (`<cache>.failovers.jsonl`), so `geomirror
// status` can say when and why roles changed even after restarts. A `memory:` cache keeps none.
import { appendFile, readFile } from 'node:fs/promises';
import type { FailoverRecord } from './status.js';

export class FailoverHistory {
  constructor(private readonly path: string | undefined) {}

  async load(): Promise<FailoverRecord[]> {
    if (this.path === undefined) return [];
    let text: string;
    try {
      text = await readFile(this.path, 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw err;
    }
    const out: FailoverRecord[] = [];
    for (const line of text.split('\n')) {
      if (line.trim() === '') continue;
      try {
        const r = JSON.parse(line) as FailoverRecord;
        if (typeof r.at === 'string' && typeof r.kind === 'string') out.push(r);
      } catch {
        // A torn last line (crash while appending) is skipped; the history is informational.
      }
    }
    return out;
  }

  async append(r: FailoverRecord): Promise<void> {
    if (this.path === undefined) return;
    await appendFile(this.path, JSON.stringify(r) + '\n', { mode: 0o600 });
  }
}
