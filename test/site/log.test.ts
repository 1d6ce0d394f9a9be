// Site logs: JSON lines with site/component fields; the pretty form for terminals.
import { describe, expect, it } from 'vitest';
import { componentLogger, createLogger, formatPretty, logStateChange } from '../../src/site/log.js';

function collector(isTTY = false): { lines: string[]; write(s: string): void; isTTY: boolean } {
  const lines: string[] = [];
  return { lines, isTTY, write: (s: string) => void lines.push(...s.split('\n').filter((l) => l !== '')) };
}

describe('site logger', () => {
  it('writes one JSON line per state change with site and component', () => {
    const out = collector();
    const log = createLogger({ site: 'east', destination: out, format: 'json' });
    logStateChange(componentLogger(log, 'link', { peer: 'local' }), 'mirror west', 'degraded', 'resyncing', { resyncPercent: 0 });
    expect(out.lines).toHaveLength(1);
    const rec = JSON.parse(out.lines[0]!) as Record<string, unknown>;
    expect(rec).toMatchObject({ level: 'info', site: 'east', component: 'link', peer: 'local', event: 'state', subject: 'mirror west', from: 'degraded', to: 'resyncing', resyncPercent: 0, msg: 'mirror west: degraded -> resyncing' });
    expect(rec.time).toMatch(/^\d{4}-\d\d-\d\dT/);
  });

  it('prints human lines on a terminal, without colour when asked', () => {
    const out = collector(true);
    const log = createLogger({ site: 'east', destination: out, color: false });
    componentLogger(log, 'nbd').warn({ client: '127.0.0.1:5000', bytes: 4096 }, 'client went away');
    expect(out.lines).toHaveLength(1);
    expect(out.lines[0]).toMatch(/^\d\d:\d\d:\d\d\.\d{3} WARN  east\/nbd client went away client=127\.0\.0\.1:5000 bytes=4096$/);
  });

  it('prints error stacks under the line and passes non-JSON through', () => {
    const out = collector(true);
    createLogger({ destination: out, color: false, format: 'pretty' }).error({ err: new Error('disk gone') }, 'storage failed');
    expect(out.lines[0]).toMatch(/ERROR storage failed$/);
    expect(out.lines[1]).toMatch(/^ {2}Error: disk gone/);
    expect(formatPretty('plain text\n')).toBe('plain text');
  });

  it('respects the level', () => {
    const out = collector();
    const log = createLogger({ destination: out, format: 'json', level: 'warn' });
    log.info('hidden');
    log.warn('shown');
    expect(out.lines.map((l) => (JSON.parse(l) as { msg: string }).msg)).toEqual(['shown']);
  });
});
