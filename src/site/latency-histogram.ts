// A Prometheus histogram for latencies observed on the write path (issue 18). prom-client's
// Histogram.observe() validates and hashes its label object and looks the series up by that
// hash on every call: three calls per host write on a primary (the host ack and one ack per
// mirror), about 5% of everything the primary allocated per write (sampling heap profiler, 4 KiB
// QD16). Here a series is a plain record of bucket counts found once per label set: observing
// is a bucket search and three additions. The registry formats it like any prom-client metric
// (same names, labels, cumulative buckets, _sum and _count), so dashboards see no change.
import type { Metric, Registry } from 'prom-client';

/** One label set's counts. */
export class HistogramSeries {
  /** Count per bucket (not cumulative); the last one is +Inf. */
  readonly counts: Float64Array;
  sum = 0;
  count = 0;

  constructor(
    readonly labels: Readonly<Record<string, string>>,
    private readonly bounds: readonly number[],
  ) {
    this.counts = new Float64Array(bounds.length + 1);
  }

  /** Records one value (seconds). A value that is not a finite number is dropped, not counted. */
  observe(value: number): void {
    if (!Number.isFinite(value)) return;
    const b = this.bounds;
    let i = 0;
    while (i < b.length && value > b[i]!) i++;
    this.counts[i]!++;
    this.sum += value;
    this.count++;
  }
}

interface Sample {
  labels: Record<string, string | number>;
  value: number;
  metricName: string;
}

export class LatencyHistogram<L extends string = never> {
  readonly type = 'histogram';
  readonly aggregator = 'sum';
  private readonly series = new Map<string, HistogramSeries>();

  constructor(
    readonly name: string,
    readonly help: string,
    private readonly labelNames: readonly L[],
    private readonly bounds: readonly number[],
    registers: readonly Registry[],
  ) {
    for (let i = 1; i < bounds.length; i++) if (!(bounds[i]! > bounds[i - 1]!)) throw new Error(`${name}: bucket bounds must rise (${bounds.join(', ')})`);
    for (const r of registers) r.registerMetric(this as unknown as Metric);
  }

  /** The series of `labels` (every label name given), made on first use: keep it and observe() on it. */
  seriesOf(labels: Readonly<Record<L, string>>): HistogramSeries {
    const key = this.labelNames.map((n) => labels[n]).join('\u0000');
    let s = this.series.get(key);
    if (s === undefined) {
      for (const n of this.labelNames) if (typeof labels[n] !== 'string') throw new Error(`${this.name}: label ${n} is missing`);
      this.series.set(key, (s = new HistogramSeries(Object.fromEntries(this.labelNames.map((n) => [n, labels[n]])), this.bounds)));
    }
    return s;
  }

  /** prom-client's call shape, for code off the hot path and for tests. */
  observe(labels: Readonly<Record<L, string>>, value: number): void {
    this.seriesOf(labels).observe(value);
  }

  /** What prom-client's registry formats (cumulative buckets, le last among the labels as prom-client writes it). */
  async get(): Promise<{ name: string; help: string; type: 'histogram'; aggregator: 'sum'; values: Sample[] }> {
    const values: Sample[] = [];
    for (const s of this.series.values()) {
      let acc = 0;
      for (let i = 0; i < this.bounds.length; i++) {
        acc += s.counts[i]!;
        values.push({ labels: { le: this.bounds[i]!, ...s.labels }, value: acc, metricName: `${this.name}_bucket` });
      }
      values.push({ labels: { le: '+Inf', ...s.labels }, value: s.count, metricName: `${this.name}_bucket` });
      values.push({ labels: { ...s.labels }, value: s.sum, metricName: `${this.name}_sum` });
      values.push({ labels: { ...s.labels }, value: s.count, metricName: `${this.name}_count` });
    }
    return { name: this.name, help: this.help, type: this.type, aggregator: this.aggregator, values };
  }

  /** Zeroes every series (kept: the write path holds them). */
  reset(): void {
    for (const s of this.series.values()) {
      s.counts.fill(0);
      s.sum = 0;
      s.count = 0;
    }
  }
}
