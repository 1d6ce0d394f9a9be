// Failover history of one site (issue 10 item 6): every promotion, fencing and demotion it took
// part in, one JSON line each, beside its cache (`<cache>.failovers.jsonl`), so `geomirror
// status` can say when and why roles changed even after restarts. A `memory:` cache keeps none.
import { open, readFile } from 'node:fs/promises';
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
    const fh = await open(this.path, 'a+', 0o600);
    try {
      // After a torn append (crash mid-line) the file does not end in a newline; start a new
      // line, or this record would be glued to the torn one and skipped with it on load.
      const { size } = await fh.stat();
      let lead = '';
      if (size > 0) {
        const last = Buffer.alloc(1);
        await fh.read(last, 0, 1, size - 1);
        if (last[0] !== 0x0a) lead = '\n';
      }
      await fh.appendFile(lead + JSON.stringify(r) + '\n');
    } finally {
      await fh.close();
    }
  }
}
