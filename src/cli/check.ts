// `geomirror check --config FILE`: validates the cluster file, devices, ports, keys and
// certificates without starting anything (src/site/check.ts), and prints one row per finding
// naming the key path, site or device and the fix. Exit 1 when a site would not start.
import { relative } from 'node:path';
import type { Command } from 'commander';
import type { CheckFinding, CheckReport } from '../site/check.js';

/** The findings as a table: LEVEL, WHERE (key path, line:column), PROBLEM, FIX. */
export function formatCheckTable(report: CheckReport, cwd = process.cwd()): string {
  const file = relative(cwd, report.file) || report.file;
  const rows = report.findings.map((f: CheckFinding) => ({
    level: f.severity,
    where: `${f.line !== undefined ? `${file}:${f.line}${f.column !== undefined ? `:${f.column}` : ''} ` : ''}${f.where}`,
    what: f.what,
    fix: f.fix,
  }));
  const problems = report.findings.filter((f) => f.severity === 'problem').length;
  const warnings = report.findings.length - problems;
  const scope = report.here.length + report.elsewhere.length === 0 ? '' :
    `; checked on this machine: ${report.here.join(', ') || 'no site'}${report.elsewhere.length > 0 ? `; elsewhere (file only): ${report.elsewhere.join(', ')}` : ''}`;
  const summary = `${file}: ${problems === 0 ? 'no problems' : `${problems} problem(s)`}${warnings > 0 ? `, ${warnings} warning(s)` : ''}${scope}`;
  if (rows.length === 0) return summary;
  const header = { level: 'LEVEL', where: 'WHERE', what: 'PROBLEM', fix: 'FIX' };
  const cols = ['level', 'where', 'what'] as const;
  const width = Object.fromEntries(cols.map((c) => [c, Math.max(...[header, ...rows].map((r) => r[c].length))])) as Record<(typeof cols)[number], number>;
  const line = (r: typeof header): string => `${cols.map((c) => r[c].padEnd(width[c])).join('  ')}  ${r.fix}`.trimEnd();
  return [line(header), ...rows.map(line), '', summary].join('\n');
}

export function registerCheck(program: Command): void {
  program
    .command('check')
    .description('check a cluster file, its devices, ports, keys and certificates without starting anything')
    .requiredOption('-c, --config <file>', 'the cluster file (YAML)')
    .option('-s, --site <name>', 'check this site as the one running on this machine (default: every site whose addresses are this machine\'s)')
    .option('--json', 'print the findings as JSON')
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror check --config targets/loopback/cluster.yaml
  $ geomirror check -c /etc/geomirror/cluster.yaml --site pi-north

Checks the file (with line and column), then for the sites that run here: device files present,
big enough, readable and writable; listen/nbd/admin ports free; the key file valid and private;
the TLS files (tls: in the file, default beside the key: ca.crt, site-SITE.crt, site-SITE.key)
present, keys private (0600), each site certificate for its site and cluster, unexpired, from the
CA and the pair of its key; nbd-tls: files readable. Exit code 1 when there is a problem, 0 when
there are none (warnings say what geomirror start or geomirror pki would create, or that
transport: insecure is on).`,
    )
    .action(async (opts: { config: string; site?: string; json?: boolean }) => {
      // Loaded here, not at the top: the checks (config loader, X.509) are most of what the
      // command loads, and `geomirror --help` must not pay for them (issue 19).
      const { checkClusterFile } = await import('../site/check.js');
      const report = await checkClusterFile(opts.config, opts.site !== undefined ? { site: opts.site } : {});
      process.stdout.write(opts.json ? `${JSON.stringify(report, null, 2)}\n` : `${formatCheckTable(report)}\n`);
      process.exitCode = report.findings.some((f) => f.severity === 'problem') ? 1 : 0;
    });
}
