// `geomirror start` (what `npm start` runs): the one-machine demo of issue 8. Creates the loopback
// files and the cluster key on first run, starts every site of the cluster file in its own
// process, prints the NBD URI, the replica paths and a try-it line, then a live one-line status
// until Ctrl-C, which stops every site cleanly. Site logs go to a file so the status line stays
// readable.
// The command line (its options and help) is start-command.ts, which loads this module
// when the command runs.
import { createWriteStream, mkdirSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { ConfigError, loadConfig, type ClusterConfig } from '../site/config.js';
import { prepareLoopbackCluster } from '../site/prepare.js';
import { preparePki } from '../site/pki.js';
import { restartPolicyDefault, startCluster } from './cluster.js';
import { shellCommand } from './package-root.js';
import { fetchStatus, statusTimeoutMs, type StatusResult } from './status.js';
import { adminCredentials, adminRequest, type AdminCredentials } from './admin-client.js';

/** How often the live status line refreshes. */
export const statusRefreshMs = 1000;

/** Reads one counter's total (summed over label sets) from Prometheus text. */
export function counterTotal(metricsText: string, name: string): number {
  let total = 0;
  for (const line of metricsText.split('\n')) {
    if (!line.startsWith(name)) continue;
    const rest = line.slice(name.length);
    if (rest[0] !== ' ' && rest[0] !== '{') continue;
    const v = Number(line.slice(line.lastIndexOf(' ') + 1));
    if (Number.isFinite(v)) total += v;
  }
  return total;
}

async function fetchMetrics(host: string, port: number, site: string, creds: AdminCredentials): Promise<string | undefined> {
  try {
    const r = await adminRequest({ host, port, method: 'GET', path: '/metrics', site, creds, timeoutMs: 2000, bodyCharsMax: 16 * 1024 * 1024 });
    return r.code === 200 ? r.body : undefined;
  } catch {
    return undefined;
  }
}

/** One line: host throughput at the primary, then each site's state as the primary sees it. */
export function statusLine(results: StatusResult[], writesPerSec: number, mibPerSec: number): string {
  const parts = [`${writesPerSec.toFixed(0)} writes/s ${mibPerSec.toFixed(1)} MiB/s`];
  for (const r of results) {
    if ('error' in r) {
      parts.push(`${r.target.name}: no answer`);
      continue;
    }
    const s = r.status;
    if (s.role === 'primary') {
      parts.push(`${s.site}: primary seq ${s.lastSeqAcked}`);
      for (const p of s.peers) {
        const lag = p.lastSeqAcked !== undefined ? BigInt(s.lastSeqAcked) - BigInt(p.lastSeqAcked) : undefined;
        const state = p.sync === 'resyncing' ? `resyncing ${p.resyncPercent ?? 0}%` : (p.sync ?? p.link);
        parts.push(`${p.name}: ${state}${lag !== undefined && lag > 0n ? ` (lag ${lag})` : ''}${p.link === 'up' ? '' : ' [link down]'}`);
      }
    }
  }
  return parts.join(' | ');
}

export async function runStart(configFile: string): Promise<number> {
  let config: ClusterConfig;
  try {
    config = loadConfig(configFile);
  } catch (e) {
    process.stderr.write(`${e instanceof ConfigError ? e.message : String(e)}\n`);
    return 1;
  }
  const prepared = prepareLoopbackCluster(config);
  const rel = (p: string) => relative(process.cwd(), p) || p;
  if (prepared.createdKey) process.stdout.write(`created the cluster key ${rel(prepared.createdKey)}\n`);
  try {
    // TLS from the first minute: the cluster CA and every site's certificate (src/site/pki.ts).
    const pki = await preparePki(config);
    if (pki.created.length > 0) process.stdout.write(`created the cluster CA and site certificates under ${rel(config.tls.dir)} (${pki.created.filter((f) => f.path.endsWith('.crt')).length} certificates)\n`);
  } catch (e) {
    process.stderr.write(`geomirror start: ${(e as Error).message}\n`);
    return 1;
  }
  if (prepared.createdFiles.length > 0) process.stdout.write(`created ${prepared.createdFiles.length} loopback file(s) (sparse) under ${rel(dirname(prepared.createdFiles[0]!))}\n`);

  const logFile = join(config.dir, 'data', 'cluster.log');
  mkdirSync(dirname(logFile), { recursive: true });
  const log = createWriteStream(logFile, { flags: 'a' });
  process.stdout.write(`starting ${config.siteNames.length} sites of cluster ${config.cluster} (logs: ${rel(logFile)})\n`);
  let signals = 0;
  let ticker: NodeJS.Timeout | undefined;
  // A site's death and restart go to the terminal (over the live status line) and to the log.
  const notice = {
    write: (line: string): void => {
      log.write(line);
      process.stderr.write(process.stdout.isTTY && ticker !== undefined ? `\r\x1b[2K${line}` : line);
    },
  };
  const cluster = startCluster({ configFile: config.file, sites: config.siteNames, out: log, err: log, notice, restart: restartPolicyDefault, env: { GEOMIRROR_LOG_FORMAT: 'json' } });

  const onSignal = (sig: NodeJS.Signals): void => {
    if (ticker) clearInterval(ticker);
    if (++signals === 1) {
      process.stdout.write(`\n${sig}: stopping every site (again to kill them at once)\n`);
      void cluster.stop();
    } else cluster.kill();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);

  try {
    await cluster.ready;
  } catch (e) {
    process.stderr.write(`geomirror start: ${(e as Error).message}; see ${rel(logFile)}\n`);
    await cluster.stop();
    return 1;
  }
  const primary = config.sites[config.primary]!;
  const uri = primary.nbd ? `nbd://${primary.nbd.text}/${config.volumes[0]!.name}` : undefined;
  const lines = [
    '',
    config.multiVolume
      ? `cluster ${config.cluster} is up: ${config.volumes.length} volumes in ${config.groups.length} consistency group(s) on ${config.siteNames.length} sites`
      : `cluster ${config.cluster} is up: ${config.volume.name} (${config.volume.sizeBytes / 2 ** 20} MiB) on ${config.siteNames.length} sites`,
    ...(config.multiVolume && primary.nbd
      ? ['  NBD exports:', ...config.volumes.map((v) => `    nbd://${primary.nbd!.text}/${v.name}  (${v.sizeBytes / 2 ** 20} MiB, group ${v.group})`)]
      : [uri ? `  NBD export:  ${uri}` : '  (the primary has no nbd address)']),
    '  replicas:',
    ...config.siteNames.map((n) => `    ${n.padEnd(8)} ${config.sites[n]!.role.padEnd(8)} ${config.sites[n]!.storage.map((d) => rel(d.text.replace(/^loopback:/, ''))).join(', ')}`),
    '  try it:',
    ...(uri
      ? [
          `    nbdinfo ${uri}`,
          `    head -c 64M /dev/urandom > /tmp/rand.img && qemu-img convert -n -f raw -O raw /tmp/rand.img ${uri}`,
          `    sha256sum ${config.siteNames.map((n) => rel(config.sites[n]!.storage[0]?.text.replace(/^loopback:/, '') ?? '')).join(' ')}`,
        ]
      : []),
    `    ${shellCommand()} status --config ${rel(config.file)}`,
    'Ctrl-C stops every site.',
    '',
  ];
  process.stdout.write(lines.join('\n') + '\n');

  if (primary.admin) {
    const creds = adminCredentials(config);
    const primaryAdmin = primary.admin;
    let last = { t: Date.now(), writes: 0, bytes: 0 };
    const refresh = async () => {
      const [metrics, results] = await Promise.all([
        fetchMetrics(primaryAdmin.host, primaryAdmin.port, config.primary, creds),
        Promise.all(config.siteNames.filter((n) => config.sites[n]!.admin).map((n) => fetchStatus({ name: n, admin: config.sites[n]!.admin!.text, site: n }, statusTimeoutMs, creds))),
      ]);
      const now = Date.now();
      const writes = metrics ? counterTotal(metrics, 'geomirror_writes_total') : last.writes;
      const bytes = metrics ? counterTotal(metrics, 'geomirror_write_bytes_total') : last.bytes;
      const dt = Math.max(0.001, (now - last.t) / 1000);
      const line = statusLine(results, (writes - last.writes) / dt, (bytes - last.bytes) / dt / 2 ** 20);
      last = { t: now, writes, bytes };
      if (signals === 0) process.stdout.write(process.stdout.isTTY ? `\r\x1b[2K${line}` : `${line}\n`);
    };
    ticker = setInterval(() => void refresh(), statusRefreshMs);
  }
  const code = await cluster.done;
  if (ticker) clearInterval(ticker);
  log.end();
  process.stdout.write(`\nevery site stopped${code === 0 ? ' cleanly' : ' (some with errors: see the log)'}\n`);
  return code;
}
