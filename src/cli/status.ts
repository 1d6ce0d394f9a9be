// `geomirror status`: which sites are in sync and how far behind (issue 5 item 8). Reads
// GET /status from one admin address or from every site of a cluster file and prints one
// row per site. A mirror's sync state, link and RTT are taken from the site that feeds it
// (the primary or the relay before it), because that side decides whether it is in sync;
// a site's own view fills in where no feeder answered.
// The command line (its options and help) is status-command.ts, which loads this module
// when the command runs.
import cliProgress from 'cli-progress';
import { ConfigError, loadConfig, parseAddress } from '../site/config.js';
import { adminCredentials, adminRequest, type AdminCredentials } from './admin-client.js';
import { defaultAdmin, defaultClusterFile } from './defaults.js';
import { parseSiteStatus, type FailoverRecord, type PeerStatus, type SiteStatus } from '../site/status.js';
import { formatBytes } from '../site/units.js';

/** A site that does not answer within this is shown as unreachable. */
export const statusTimeoutMs = 3_000;
/** A status answer is a few KiB; anything far larger is not a geomirror site. */
export const statusBodyCharsMax = 1024 * 1024;

export interface StatusTarget {
  /** Site name from the cluster file, or the address when queried by --admin. */
  name: string;
  admin: string;
  /** The site expected there (its certificate must name it); unknown for --admin HOST:PORT. */
  site?: string;
}

export type StatusResult = { target: StatusTarget; status: SiteStatus } | { target: StatusTarget; error: string };

/** GET /status of one site, authenticated with `creds` (adminCredentials of the cluster file). */
export async function fetchStatus(target: StatusTarget, timeoutMs = statusTimeoutMs, creds?: AdminCredentials): Promise<StatusResult> {
  const a = parseAddress(target.admin);
  if (a === undefined) return { target, error: `${target.admin} is not HOST:PORT` };
  try {
    const { code, body } = await adminRequest({ host: a.host, port: a.port, method: 'GET', path: '/status', ...(target.site !== undefined ? { site: target.site } : {}), creds: creds ?? { cluster: '' }, timeoutMs, bodyCharsMax: statusBodyCharsMax });
    if (code !== 200) return { target, error: `HTTP ${code}: ${body.trim().slice(0, 200)}` };
    return { target, status: parseSiteStatus(JSON.parse(body), target.admin) };
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ETIMEDOUT' ? `no answer within ${timeoutMs} ms` : e.code === 'ECONNREFUSED' ? 'connection refused (is the site running?)' : e.message;
    return { target, error: why };
  }
}

export interface StatusRow {
  site: string;
  role: string;
  epoch: string;
  acked: string;
  state: string;
  cache: string;
  link: string;
  rtt: string;
  /** Relays only: what the relay holds for its next hop (printed under the table). */
  hop?: string;
}

const pct = (x: number): string => `${Math.floor(x)}%`;

function syncText(p: Pick<PeerStatus, 'sync' | 'resyncPercent'>): string | undefined {
  if (p.sync === undefined) return undefined;
  return p.sync === 'resyncing' && p.resyncPercent !== undefined ? `resyncing ${pct(p.resyncPercent)}` : p.sync;
}

/** One row per queried site; feeders' views of their peers override a site's own state. */
export function statusRows(results: StatusResult[]): StatusRow[] {
  const fedBy = new Map<string, PeerStatus>();
  for (const r of results) {
    if (!('status' in r)) continue;
    for (const p of r.status.peers) if (p.relation === 'mirror' || p.relation === 'downstream') fedBy.set(p.name, p);
  }
  return results.map((r) => {
    if (!('status' in r)) return { site: r.target.name, role: '?', epoch: '-', acked: '-', state: 'unreachable', cache: '-', link: '-', rtt: '-' };
    const s = r.status;
    const feeder = fedBy.get(s.site);
    const upstream = s.peers.find((p) => p.relation === 'upstream');
    const fed = s.peers.filter((p) => p.relation === 'mirror' || p.relation === 'downstream');
    const own = s.state === 'resyncing' && s.resyncPercent !== undefined ? `resyncing ${pct(s.resyncPercent)}` : s.state;
    // A failover can leave a site acting in another role than the cluster file's (issue 10
    // item 6): show both, and say when a newer epoch fenced an old primary.
    const role = s.configuredRole !== undefined && s.configuredRole !== s.role ? `${s.role} (was ${s.configuredRole})` : s.role;
    const fenced = typeof s.fencedBy === 'number' ? `, fenced by epoch ${s.fencedBy}` : '';
    const view = feeder ?? upstream;
    const link = view ? view.link : fed.length > 0 ? `${fed.filter((p) => p.link === 'up').length}/${fed.length} up` : '-';
    const rttMs = view?.rttMs;
    const cap = s.cache.capacityBytes;
    const down = fed.find((p) => p.relay !== undefined);
    const hop = down?.relay === undefined ? undefined
      : `${s.site} -> ${down.name} (${down.link}, ack ${down.relay.ackMode}): ${down.relay.cachedEntries} cached, ` +
        `${down.relay.lagWrites} writes / ${formatBytes(down.relay.lagBytes)} / ${down.relay.lagMs} ms behind` +
        (down.relay.oldestUnackedSeq !== undefined ? `, oldest unacked seq ${down.relay.oldestUnackedSeq}` : '');
    return {
      ...(hop !== undefined ? { hop } : {}),
      site: s.site,
      role,
      epoch: String(s.epoch),
      acked: s.lastSeqAcked,
      state: `${(feeder && syncText(feeder)) ?? own}${fenced}`,
      cache: cap > 0 ? `${formatBytes(s.cache.usedBytes)}/${formatBytes(cap)} (${pct((100 * s.cache.usedBytes) / cap)})` : '-',
      link,
      rtt: rttMs === undefined ? '-' : rttMs < 1 ? `${(rttMs * 1000).toFixed(0)} us` : `${rttMs.toFixed(1)} ms`,
    };
  });
}

const finite = (x: unknown): x is number => typeof x === 'number' && Number.isFinite(x) && x >= 0;

/** 75 -> "1m15s", 3700 -> "1h01m", 8 -> "8s". */
export function formatEtaSeconds(seconds: number): string {
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** What a feeder says about one peer it feeds: out-of-sync bytes, resync rate and ETA, acked seq. */
export function peerDetail(p: PeerStatus): string {
  const parts: string[] = [syncText(p) ?? p.link];
  if (finite(p.outOfSyncBytes)) parts.push(p.outOfSyncBytes === 0 ? 'nothing out of sync' : `${formatBytes(p.outOfSyncBytes)} out of sync`);
  if (finite(p.resyncBytesPerSec)) parts.push(`resync ${formatBytes(p.resyncBytesPerSec)}/s`);
  if (finite(p.resyncEtaSeconds)) parts.push(`ETA ${formatEtaSeconds(p.resyncEtaSeconds)}`);
  if (typeof p.lastSeqAcked === 'string') parts.push(`acked seq ${p.lastSeqAcked}`);
  return parts.join(', ');
}

/**
 * One line per peer a site feeds, when the site reports the numbers of a resync (out-of-sync
 * bytes, rate, ETA); `all` prints them for every fed peer (status --watch).
 */
export function peerLines(results: StatusResult[], all = false): string[] {
  const lines: string[] = [];
  for (const r of results) {
    if (!('status' in r)) continue;
    for (const p of r.status.peers) {
      if (p.relation !== 'mirror' && p.relation !== 'downstream') continue;
      if (!all && !finite(p.outOfSyncBytes) && !finite(p.resyncBytesPerSec) && !finite(p.resyncEtaSeconds)) continue;
      lines.push(`peer ${r.status.site} -> ${p.name}: ${peerDetail(p)}`);
    }
  }
  return lines;
}

/** cli-progress's bar renderer (its typings omit the Format helpers it exports). */
const barFormat = (cliProgress as unknown as { Format: { BarFormat(progress: number, o: { barsize: number; barCompleteString: string; barIncompleteString: string; barGlue: string }): string } }).Format.BarFormat;

/** A text progress bar (cli-progress's bar format): `[#######---] 70%`. */
export function progressBar(fraction: number, widthChars = 30): string {
  const f = Math.min(1, Math.max(0, Number.isFinite(fraction) ? fraction : 0));
  const bar = barFormat(f, { barsize: widthChars, barCompleteString: '#'.repeat(widthChars), barIncompleteString: '-'.repeat(widthChars), barGlue: '' });
  return `[${bar}] ${pct(100 * f).padStart(4)}`;
}

/** Bars for every resync (per fed peer) and every verify (per site) in progress. */
export function progressLines(results: StatusResult[]): string[] {
  const lines: string[] = [];
  for (const r of results) {
    if (!('status' in r)) continue;
    const s = r.status;
    for (const p of s.peers) {
      if (p.sync !== 'resyncing') continue;
      const extra = [finite(p.outOfSyncBytes) ? `${formatBytes(p.outOfSyncBytes)} left` : '', finite(p.resyncBytesPerSec) ? `${formatBytes(p.resyncBytesPerSec)}/s` : '', finite(p.resyncEtaSeconds) ? `ETA ${formatEtaSeconds(p.resyncEtaSeconds)}` : ''].filter((x) => x !== '');
      lines.push(`resync ${s.site} -> ${p.name}  ${progressBar((p.resyncPercent ?? 0) / 100)}${extra.length > 0 ? `  ${extra.join('  ')}` : ''}`);
    }
    const v = s.verify;
    if (v !== undefined && finite(v.doneBytes) && finite(v.totalBytes) && v.totalBytes > 0) {
      lines.push(`verify ${s.site}  ${progressBar(v.doneBytes / v.totalBytes)}  ${formatBytes(v.doneBytes)} of ${formatBytes(v.totalBytes)}`);
    }
  }
  return lines;
}

/**
 * Sites with several volumes (issue 20) report each consistency group's status: the results
 * split into one set per group (a site that does not carry a group is left out of its set),
 * in order of first appearance. Undefined when no site reports groups.
 */
export function groupedResults(results: StatusResult[]): { group: string; volumes: string; results: StatusResult[] }[] | undefined {
  if (!results.some((r) => 'status' in r && r.status.groups !== undefined)) return undefined;
  const order: { group: string; volumes: string }[] = [];
  for (const r of results) {
    if (!('status' in r)) continue;
    for (const g of r.status.groups ?? []) {
      if (!order.some((o) => o.group === g.group)) order.push({ group: g.group, volumes: g.volumes.map((v) => `${v.name} ${formatBytes(v.sizeBytes)}`).join(', ') });
    }
  }
  return order.map((o) => ({
    ...o,
    results: results.flatMap((r): StatusResult[] => {
      if (!('status' in r)) return [r];
      const g = r.status.groups?.find((x) => x.group === o.group);
      return g === undefined ? [] : [{ target: r.target, status: g.status }];
    }),
  }));
}

/** The status tables: one, or one per consistency group under a heading naming its volumes. */
export function statusText(results: StatusResult[], all = false): string {
  const groups = groupedResults(results);
  if (groups === undefined) return formatStatusTable(statusRows(results), [...peerLines(results, all), ...coordinatorLines(results), ...failoverLines(results)]);
  return groups.map((g) => [`group ${g.group} (${g.volumes})`, formatStatusTable(statusRows(g.results), [...peerLines(g.results, all), ...coordinatorLines(g.results), ...failoverLines(g.results)])].join('\n')).join('\n\n');
}

/**
 * With an etcd coordinator (issue 20 item 3): one line per site that runs a session, e.g.
 * `coordinator local holder: lease held (7587…), key held by local, epoch 1, etcd reachable`,
 * and why when its authority is not plainly held.
 */
export function coordinatorLines(results: StatusResult[]): string[] {
  const lines: string[] = [];
  for (const r of results) {
    if (!('status' in r)) continue;
    const c = r.status.coordinator;
    if (typeof c !== 'object' || c === null || typeof c.mode !== 'string') continue;
    const parts = [
      `lease ${c.lease}${typeof c.leaseId === 'string' ? ` (${c.leaseId})` : ''}`,
      `key held by ${typeof c.holder === 'string' ? c.holder : 'nobody'}`,
      ...(typeof c.epoch === 'number' ? [`epoch ${c.epoch}`] : []),
      `etcd ${c.reachable === true ? 'reachable' : 'unreachable'}`,
      ...(typeof c.authority === 'string' ? [`host writes ${c.authority === 'lost' ? 'held' : c.authority === 'exempt' ? 'served without a lease' : 'served'}`] : []),
    ];
    const why = c.authority !== 'held' && typeof c.why === 'string' && c.why !== '' ? `: ${c.why}` : '';
    lines.push(`coordinator ${r.status.site} ${c.mode}: ${parts.join(', ')}${why}`.replace(/\p{Cc}+/gu, ' '));
  }
  return lines;
}

/** One screen of `status --watch`: the table, peers, bars, failovers, and when. */
export function watchFrame(results: StatusResult[], at: Date = new Date()): string {
  const table = statusText(results, true);
  const bars = (groupedResults(results) ?? [{ group: '', results }]).flatMap((g) => progressLines(g.results).map((l) => (g.group ? `[${g.group}] ${l}` : l)));
  const errors = results.flatMap((r) => ('error' in r ? [`${r.target.name} (${r.target.admin}): ${r.error}`] : []));
  return [`geomirror status at ${at.toISOString().replace(/\.\d{3}Z$/, 'Z')} (Ctrl-C ends)`, '', table, ...(bars.length > 0 ? ['', ...bars] : []), ...(errors.length > 0 ? ['', ...errors] : [])].join('\n');
}

/** ISO time to the second (`2026-11-25T05:49:35Z`); text that is not a time is kept as is. */
function secondsText(at: string): string {
  const t = Date.parse(at);
  return Number.isNaN(t) ? at : new Date(t).toISOString().replace(/\.\d{3}Z$/, 'Z');
}

function isFailoverRecord(r: unknown): r is FailoverRecord {
  const x = r as Partial<FailoverRecord> | null;
  return typeof x === 'object' && x !== null && typeof x.at === 'string' && typeof x.kind === 'string' && typeof x.site === 'string' &&
    typeof x.fromEpoch === 'number' && typeof x.toEpoch === 'number';
}

/**
 * One line per failover any queried site reported (issue 10 item 6), oldest first. Several
 * sites may report the same event (and a site reports this life's promotion with a
 * millisecond time that can wobble between answers), so events are deduplicated by time to
 * the second, site and kind.
 */
export function failoverLines(results: StatusResult[]): string[] {
  const seen = new Map<string, FailoverRecord & { when: string }>();
  for (const r of results) {
    if (!('status' in r) || !Array.isArray(r.status.failovers)) continue;
    for (const f of r.status.failovers) {
      if (!isFailoverRecord(f)) continue;
      const when = secondsText(f.at);
      const key = `${when}\0${f.site}\0${f.kind}`;
      if (!seen.has(key)) seen.set(key, { ...f, when });
    }
  }
  return [...seen.values()]
    .sort((a, b) => a.when.localeCompare(b.when) || a.at.localeCompare(b.at))
    .map((f) => {
      const epochs = f.fromEpoch === f.toEpoch ? `epoch ${f.toEpoch}` : `epoch ${f.fromEpoch} -> ${f.toEpoch}`;
      const seq = typeof f.lastSeq === 'string' ? ` at seq ${f.lastSeq}` : '';
      const why = (typeof f.reason === 'string' && f.reason !== '' ? `: ${f.reason}` : '') + (typeof f.revision === 'string' ? ` (etcd revision ${f.revision})` : '');
      // The reason may come from a request's query string: keep it on one line, no escapes.
      return `failover ${f.when} ${f.site} ${f.kind} ${epochs}${seq}${why}`.replace(/\p{Cc}+/gu, ' ');
    });
}

/** The table, then relay hop lines and failover lines (from failoverLines) under it. */
export function formatStatusTable(rows: StatusRow[], failovers: readonly string[] = []): string {
  const header: StatusRow = { site: 'SITE', role: 'ROLE', epoch: 'EPOCH', acked: 'LAST ACKED', state: 'STATE', cache: 'CACHE', link: 'LINK', rtt: 'RTT' };
  const cols = Object.keys(header) as Exclude<keyof StatusRow, 'hop'>[];
  const width = Object.fromEntries(cols.map((c) => [c, Math.max(...[header, ...rows].map((r) => r[c].length))])) as Record<keyof StatusRow, number>;
  const table = [header, ...rows].map((r) => cols.map((c) => r[c].padEnd(width[c])).join('  ').trimEnd());
  // Relay hops (issue 7 item 4): one line each under the table, so the table stays narrow.
  const hops = rows.filter((r) => r.hop !== undefined).map((r) => `hop ${r.hop}`);
  const under = [...hops, ...failovers];
  return [...table, ...(under.length > 0 ? ['', ...under] : [])].join('\n');
}

/** What `geomirror status` is given (src/cli/status-command.ts declares the options). */
export interface StatusCliOptions {
  admin?: string;
  config?: string;
  json?: boolean;
  watch?: boolean;
  interval: string;
  count?: string;
}

/** `geomirror status`: one table, or --json, or --watch frames; exit code 1 when a site does not answer. */
export async function statusCommand(opts: StatusCliOptions): Promise<void> {
  let targets: StatusTarget[];
  let creds: AdminCredentials;
  try {
    ({ targets, creds } = statusTargets(opts));
  } catch (e) {
    process.stderr.write(`geomirror status: ${(e as Error).message}\n`);
    process.exitCode = 1;
    return;
  }
  if (opts.watch) {
    const intervalMs = Number(opts.interval);
    const count = opts.count === undefined ? Infinity : Number(opts.count);
    if (!Number.isInteger(intervalMs) || intervalMs < watchIntervalMsMin || !(count >= 1)) {
      process.stderr.write(`geomirror status: --interval must be a whole number of ms >= ${watchIntervalMsMin} and --count at least 1\n`);
      process.exitCode = 1;
      return;
    }
    await watch(targets, intervalMs, count, creds);
    return;
  }
  const results = await Promise.all(targets.map((t) => fetchStatus(t, statusTimeoutMs, creds)));
  if (opts.json) {
    process.stdout.write(`${JSON.stringify(results.map((r) => ({ site: r.target.name, admin: r.target.admin, ...('status' in r ? { status: r.status } : { error: r.error }) })), null, 2)}\n`);
  } else {
    process.stdout.write(`${statusText(results)}\n`);
    for (const r of results) if ('error' in r) process.stderr.write(`${r.target.name} (${r.target.admin}): ${r.error}\n`);
  }
  if (results.some((r) => 'error' in r)) process.exitCode = 1;
}

/** Redraws faster than this would only load the sites. */
export const watchIntervalMsMin = 100;

/** status --watch: a frame per interval; on a terminal each replaces the last. */
async function watch(targets: StatusTarget[], intervalMs: number, count: number, creds: AdminCredentials): Promise<void> {
  const tty = process.stdout.isTTY === true;
  let stop = false;
  const onSignal = (): void => {
    stop = true;
  };
  process.once('SIGINT', onSignal);
  try {
    for (let frame = 0; frame < count && !stop; frame++) {
      const t0 = Date.now();
      const results = await Promise.all(targets.map((t) => fetchStatus(t, Math.min(statusTimeoutMs, Math.max(intervalMs, 500)), creds)));
      const text = watchFrame(results);
      process.stdout.write(tty ? `\x1b[H\x1b[J${text}\n` : `${text}\n\n`);
      if (frame + 1 < count) await new Promise((r) => setTimeout(r, Math.max(0, intervalMs - (Date.now() - t0))));
    }
  } finally {
    process.off('SIGINT', onSignal);
  }
}

/** Where to ask (--admin, or every site of --config) and the credentials of the cluster file. */
export function statusTargets(opts: { admin?: string; config?: string }): { targets: StatusTarget[]; creds: AdminCredentials } {
  let config;
  try {
    // The cluster file says where the sites are and holds the credentials (its CA and key):
    // with --admin alone it is the default cluster's file.
    config = loadConfig(opts.config ?? defaultClusterFile);
  } catch (e) {
    throw new Error(e instanceof ConfigError ? e.message : String(e));
  }
  const creds = adminCredentials(config);
  if (opts.admin !== undefined || opts.config === undefined) {
    const admin = opts.admin ?? defaultAdmin;
    if (parseAddress(admin) === undefined) throw new Error(`--admin ${admin} is not HOST:PORT, e.g. 127.0.0.1:9400`);
    const site = config.siteNames.find((n) => config.sites[n]!.admin?.text === admin);
    return { targets: [{ name: site ?? admin, admin, ...(site !== undefined ? { site } : {}) }], creds };
  }
  const targets = config.siteNames.flatMap((n) => {
    const a = config.sites[n]!.admin;
    return a ? [{ name: n, admin: a.text, site: n }] : [];
  });
  if (targets.length === 0) throw new Error(`no site in ${config.file} has an admin: address to query; add e.g. admin: 127.0.0.1:9400`);
  return { targets, creds };
}
