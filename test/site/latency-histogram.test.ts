// The write path's histogram (src/site/latency-histogram.ts) must read exactly like the
// prom-client Histogram it replaced: same series, buckets, sums and counts in the scrape.
import { Histogram, Registry } from 'prom-client';
import { describe, expect, it } from 'vitest';
import { LatencyHistogram } from '../../src/site/latency-histogram.js';
import { ackLatencyBucketsSeconds } from '../../src/site/metrics.js';

function registry(): Registry {
  const r = new Registry();
  r.setDefaultLabels({ cluster: 'c1', site: 'local', role: 'primary' });
  return r;
}

/** The scrape's sample lines, sorted, labels sorted within each line (order of labels is not meaning). */
function samples(text: string): string[] {
  return text
    .split('\n')
    .filter((l) => l !== '' && !l.startsWith('#'))
    .map((l) => {
      const m = /^(\w+)\{([^}]*)\} (.+)$/.exec(l);
      if (m === null) return l;
      return `${m[1]}{${m[2]!.split(',').sort().join(',')}} ${m[3]}`;
    })
    .sort();
}

describe('LatencyHistogram', () => {
  it('scrapes like prom-client Histogram for the same observations, per label set and without labels', async () => {
    const ours = registry();
    const theirs = registry();
    const a = new LatencyHistogram('geomirror_ack_latency_seconds', 'help', ['peer'], ackLatencyBucketsSeconds, [ours]);
    const b = new Histogram({ name: 'geomirror_ack_latency_seconds', help: 'help', labelNames: ['peer'], buckets: ackLatencyBucketsSeconds, registers: [theirs] });
    const h = new LatencyHistogram('geomirror_host_ack_latency_seconds', 'help', [], ackLatencyBucketsSeconds, [ours]);
    const g = new Histogram({ name: 'geomirror_host_ack_latency_seconds', help: 'help', buckets: ackLatencyBucketsSeconds, registers: [theirs] });
    // Values on every bound (le is inclusive), between bounds, below the first and above the last.
    const values = [0, 0.00005, ...ackLatencyBucketsSeconds, 0.0003, 0.004, 0.2, 3, 7, 120];
    const east = a.seriesOf({ peer: 'east' });
    for (const [i, v] of values.entries()) {
      east.observe(v);
      b.observe({ peer: 'east' }, v);
      if (i % 3 === 0) {
        a.observe({ peer: 'west' }, v);
        b.observe({ peer: 'west' }, v);
      }
      h.seriesOf({}).observe(v);
      g.observe(v);
    }
    const got = samples(await ours.metrics());
    expect(got.length).toBe(2 * (ackLatencyBucketsSeconds.length + 3) + (ackLatencyBucketsSeconds.length + 3));
    expect(got).toEqual(samples(await theirs.metrics()));
    expect(await ours.metrics()).toContain('# TYPE geomirror_ack_latency_seconds histogram');
  });

  it('drops a value that is not a finite number; reset zeroes the series the write path holds', async () => {
    const r = registry();
    const a = new LatencyHistogram('x_seconds', 'help', ['peer'], [0.1, 1], [r]);
    const s = a.seriesOf({ peer: 'east' });
    s.observe(Number.NaN);
    s.observe(Number.POSITIVE_INFINITY);
    s.observe(0.5);
    expect(await r.metrics()).toMatch(/^x_seconds_count\{[^}]*peer="east"[^}]*\} 1$/m);
    r.resetMetrics();
    expect(await r.metrics()).toMatch(/^x_seconds_count\{[^}]*peer="east"[^}]*\} 0$/m);
    s.observe(2);
    expect(await r.metrics()).toMatch(/^x_seconds_bucket\{[^}]*le="\+Inf"[^}]*\} 1$/m);
    expect(await r.metrics()).toMatch(/^x_seconds_bucket\{[^}]*le="1"[^}]*\} 0$/m);
    expect(a.seriesOf({ peer: 'east' })).toBe(s);
  });

  it('refuses a missing label and bounds that do not rise', () => {
    const a = new LatencyHistogram('y_seconds', 'help', ['peer'], [1, 2], [registry()]);
    expect(() => a.seriesOf({} as { peer: string })).toThrow(/label peer is missing/);
    expect(() => new LatencyHistogram('z_seconds', 'help', [], [1, 1], [registry()])).toThrow(/must rise/);
  });
});
