// docs/grafana-dashboard.json loads as a Grafana dashboard (panels with PromQL targets on a
// Prometheus datasource variable), and every metric and label it queries exists in a site's
// registry, so a renamed metric fails here instead of leaving an empty panel.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { createSiteMetrics } from '../../src/site/metrics.js';

interface Target { refId: string; expr: string; datasource: { type: string; uid: string } }
interface Panel { id: number; type: string; title: string; gridPos: { h: number; w: number; x: number; y: number }; datasource: { type: string; uid: string }; targets: Target[] }
interface Dashboard { title: string; uid: string; schemaVersion: number; panels: Panel[]; templating: { list: { name: string; type: string; query: unknown }[] } }

const dashboard = JSON.parse(readFileSync(fileURLToPath(new URL('../../docs/grafana-dashboard.json', import.meta.url)), 'utf8')) as Dashboard;

/** Metric name -> label names, from the registries of a primary and of a witness (its own counter). */
function registryLabels(): Map<string, Set<string>> {
  const out = new Map<string, Set<string>>();
  for (const role of ['primary', 'witness']) {
    const m = createSiteMetrics({ site: 's', role, cluster: 'c', processMetrics: false });
    for (const metric of m.registry.getMetricsAsArray() as unknown as { name: string; labelNames: string[]; type?: string }[]) {
      const labels = new Set(['cluster', 'site', 'role', ...metric.labelNames]);
      out.set(metric.name, labels);
      // Histograms are queried through their series.
      out.set(`${metric.name}_bucket`, new Set([...labels, 'le']));
      out.set(`${metric.name}_sum`, labels);
      out.set(`${metric.name}_count`, labels);
    }
  }
  return out;
}

describe('docs/grafana-dashboard.json', () => {
  it('is a dashboard with panels, each with PromQL targets on the Prometheus datasource variable', () => {
    expect(dashboard.title).toBe('geomirror');
    expect(dashboard.uid).toMatch(/^[a-z0-9-]{1,40}$/);
    expect(dashboard.schemaVersion).toBeGreaterThanOrEqual(30);
    const vars = new Set(dashboard.templating.list.map((v) => v.name));
    expect(dashboard.templating.list.find((v) => v.name === 'datasource')).toMatchObject({ type: 'datasource', query: 'prometheus' });
    expect(dashboard.panels.length).toBeGreaterThanOrEqual(10);
    expect(new Set(dashboard.panels.map((p) => p.id)).size).toBe(dashboard.panels.length);
    for (const p of dashboard.panels) {
      expect(p.title, String(p.id)).toMatch(/\w/);
      expect(['timeseries', 'table', 'stat', 'gauge', 'state-timeline']).toContain(p.type);
      expect(p.gridPos.w).toBeGreaterThan(0);
      expect(p.datasource).toEqual({ type: 'prometheus', uid: '${datasource}' });
      expect(p.targets.length, p.title).toBeGreaterThan(0);
      for (const t of p.targets) {
        expect(t.expr, p.title).toMatch(/geomirror_/);
        expect(t.refId).toMatch(/^[A-Z]$/);
        // Every $variable a query uses is defined.
        for (const v of t.expr.matchAll(/\$(\w+)/g)) expect(vars, `${p.title}: $${v[1]}`).toContain(v[1]);
      }
    }
  });

  it('queries only metrics and labels the sites export', () => {
    const known = registryLabels();
    const used = new Set<string>();
    for (const p of dashboard.panels) {
      for (const t of p.targets) {
        const inExpr = new Set<string>();
        for (const m of t.expr.matchAll(/\b(geomirror_[a-z0-9_]+)(?:\{([^}]*)\})?/g)) {
          const name = m[1]!;
          used.add(name);
          inExpr.add(name);
          expect(known.has(name), `${p.title}: ${name} is not a geomirror metric`).toBe(true);
          for (const sel of (m[2] ?? '').matchAll(/(\w+)\s*(?:=~|!~|!=|=)/g)) {
            expect(known.get(name)!.has(sel[1]!), `${p.title}: ${name} has no label ${sel[1]}`).toBe(true);
          }
        }
        const labels = new Set([...inExpr].flatMap((n) => [...known.get(n)!]));
        for (const by of t.expr.matchAll(/\bby \(([^)]*)\)/g)) {
          for (const l of by[1]!.split(',').map((x) => x.trim())) expect(labels.has(l), `${p.title}: by (${l})`).toBe(true);
        }
      }
    }
    // The states-as-labels, read and error series of issue 19 are on the dashboard.
    for (const name of ['geomirror_peer_sync_state', 'geomirror_link_state', 'geomirror_reads_total', 'geomirror_host_io_errors_total', 'geomirror_device_io_errors_total', 'geomirror_peer_out_of_sync_bytes']) {
      expect(used, name).toContain(name);
    }
  });
});
