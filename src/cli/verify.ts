// `geomirror verify`: are the replicas identical? Done the way DRBD's online verify does it:
// every site digests its own storage region by region (GET /checksums on its admin port,
// src/site/checksums.ts) and only the digests travel, so verifying across a WAN costs
// kilobytes per GiB. Regions whose digests differ are merged into byte ranges and printed with
// the sites on each side. Exit 0: all agree; 1: some range differs; 2: a site could not be
// asked (the verify is incomplete, so it proves nothing).
// The command line (its options and help) is verify-command.ts, which loads this module
// when the command runs.
import { groupClusterConfig } from '../site/volumes.js';
import cliProgress from 'cli-progress';
import { ConfigError, loadConfig, parseAddress, type ClusterConfig, type GroupConfig } from '../site/config.js';
import { adminCredentials, adminRequest, type AdminCredentials } from './admin-client.js';
import { checksumAlgorithm, checksumCountMax, checksumRequestBytesMax, type ChecksumAnswer } from '../site/checksums.js';
import { formatBytes, parseSizeBytes } from '../site/units.js';

/** Default region: 1 MiB, DRBD's granularity order of magnitude; a mismatch is named to within it. */
export const verifyRegionBytesDefault = 1024 * 1024;
/** Bytes asked of each site per round: small enough for a progress bar that moves, big enough to keep disks streaming. */
export const verifyRoundBytesMax = 64 * 1024 * 1024;
/** A site must answer one round within this (64 MiB from a slow USB disk takes a few seconds). */
export const verifyRequestTimeoutMs = 120_000;
/** An answer holds at most checksumCountMax digests of ~70 JSON characters. */
const answerCharsMax = 256 * 1024;

export interface VerifySite {
  name: string;
  admin: string;
}

export interface MismatchRange {
  startBytes: number;
  /** Exclusive. */
  endBytes: number;
  regions: number;
  /** Sites grouped by the digest they returned, largest group first. */
  groups: string[][];
}

export type VerifyResult = { kind: 'agree'; regions: number } | { kind: 'mismatch'; regions: number; ranges: MismatchRange[] } | { kind: 'unreachable'; site: string; admin: string; error: string };

export interface VerifyOptions {
  config: ClusterConfig;
  regionBytes: number;
  onProgress?: (doneBytes: number, totalBytes: number, mismatchingRegions: number) => void;
  timeoutMs?: number;
  /** Default: from the cluster file (its CA and key). */
  creds?: AdminCredentials;
  /** With several volumes (issue 20): the consistency group to verify (`config` is then its view, src/site/volumes.ts). */
  group?: string;
}

/** The sites of a cluster file that keep a replica; each must have an admin address to be asked. */
export function verifySites(config: ClusterConfig): VerifySite[] {
  const withStorage = config.siteNames.filter((n) => config.sites[n]!.storage.length > 0);
  const noAdmin = withStorage.filter((n) => config.sites[n]!.admin === undefined);
  if (noAdmin.length > 0) throw new Error(`sites ${noAdmin.join(', ')} keep storage but have no admin: address to ask for checksums; add e.g. admin: 127.0.0.1:9401 to each in ${config.file}`);
  if (withStorage.length < 2) throw new Error(`${config.file} has ${withStorage.length} site(s) with storage; verify compares at least two replicas`);
  return withStorage.map((n) => ({ name: n, admin: config.sites[n]!.admin!.text }));
}

export async function verifyCluster(opts: VerifyOptions): Promise<VerifyResult> {
  const { config, regionBytes } = opts;
  const sites = verifySites(config);
  const volumeBytes = config.volume.sizeBytes;
  const totalRegions = Math.ceil(volumeBytes / regionBytes);
  const creds = opts.creds ?? adminCredentials(config);
  const perRound = Math.max(1, Math.min(checksumCountMax, Math.floor(verifyRoundBytesMax / regionBytes), Math.floor(checksumRequestBytesMax / regionBytes)));
  const ranges: MismatchRange[] = [];
  let mismatching = 0;
  for (let first = 0; first < totalRegions; first += perRound) {
    const count = Math.min(perRound, totalRegions - first);
    const offsetBytes = first * regionBytes;
    const answers = await Promise.all(sites.map((s) => askSite(s, { offsetBytes, regionBytes, count, ...(opts.group !== undefined ? { group: opts.group } : {}) }, volumeBytes, opts.timeoutMs ?? verifyRequestTimeoutMs, creds)));
    for (let i = 0; i < sites.length; i++) {
      const a = answers[i]!;
      if (typeof a === 'string') return { kind: 'unreachable', site: sites[i]!.name, admin: sites[i]!.admin, error: a };
    }
    const digests = answers as ChecksumAnswer[];
    for (let r = 0; r < count; r++) {
      const bySum = new Map<string, string[]>();
      sites.forEach((s, i) => {
        const d = digests[i]!.checksums[r]!;
        bySum.set(d, [...(bySum.get(d) ?? []), s.name]);
      });
      if (bySum.size === 1) continue;
      mismatching++;
      const groups = [...bySum.values()].sort((a, b) => b.length - a.length);
      const startBytes = (first + r) * regionBytes;
      const endBytes = Math.min(volumeBytes, startBytes + regionBytes);
      const last = ranges.at(-1);
      if (last && last.endBytes === startBytes && sameGroups(last.groups, groups)) {
        last.endBytes = endBytes;
        last.regions++;
      } else ranges.push({ startBytes, endBytes, regions: 1, groups });
    }
    opts.onProgress?.(Math.min(volumeBytes, (first + count) * regionBytes), volumeBytes, mismatching);
  }
  return ranges.length === 0 ? { kind: 'agree', regions: totalRegions } : { kind: 'mismatch', regions: totalRegions, ranges };
}

function sameGroups(a: string[][], b: string[][]): boolean {
  const key = (g: string[][]) => g.map((x) => [...x].sort().join(',')).sort().join('|');
  return key(a) === key(b);
}

/** One round from one site: its answer, or a string saying why it could not be had. */
async function askSite(site: VerifySite, req: { offsetBytes: number; regionBytes: number; count: number; group?: string }, volumeBytes: number, timeoutMs: number, creds: AdminCredentials): Promise<ChecksumAnswer | string> {
  const a = parseAddress(site.admin);
  if (a === undefined) return `${site.admin} is not HOST:PORT`;
  const path = `/checksums?offset=${req.offsetBytes}&regionBytes=${req.regionBytes}&count=${req.count}${req.group !== undefined ? `&group=${encodeURIComponent(req.group)}` : ''}`;
  let code: number;
  let body: string;
  try {
    ({ code, body } = await adminRequest({ host: a.host, port: a.port, method: 'GET', path, site: site.name, creds, timeoutMs, bodyCharsMax: answerCharsMax }));
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    return e.code === 'ETIMEDOUT' ? `no answer within ${timeoutMs} ms` : e.code === 'ECONNREFUSED' ? 'connection refused (is the site running?)' : e.message;
  }
  if (code === 404) return 'this site has no /checksums endpoint (an older geomirror?); upgrade it to verify';
  if (code !== 200) return `HTTP ${code}: ${body.trim().slice(0, 300)}`;
  let answer: ChecksumAnswer;
  try {
    answer = JSON.parse(body) as ChecksumAnswer;
  } catch {
    return 'answered /checksums with something that is not JSON';
  }
  const expected = Math.min(req.count, Math.ceil((volumeBytes - req.offsetBytes) / req.regionBytes));
  if (answer.algorithm !== checksumAlgorithm) return `digests with ${String(answer.algorithm)}, this verify compares ${checksumAlgorithm}`;
  if (answer.volumeBytes !== volumeBytes) return `its volume holds ${answer.volumeBytes} bytes but the cluster file says ${volumeBytes}; is it running another cluster file?`;
  if (!Array.isArray(answer.checksums) || answer.checksums.length !== expected) return `answered ${Array.isArray(answer.checksums) ? answer.checksums.length : 'no'} digests for ${expected} regions`;
  return answer;
}

/** `bytes 3145728-4194303 (1 MiB, 1 region): east differs from local, west` */
export function formatMismatch(r: MismatchRange): string {
  const where = `bytes ${r.startBytes}-${r.endBytes - 1} (${formatBytes(r.endBytes - r.startBytes)}, ${r.regions} region${r.regions === 1 ? '' : 's'})`;
  const [big, ...rest] = r.groups;
  const who =
    big!.length > 1 && rest.every((g) => g.length < big!.length)
      ? `${rest.flat().join(', ')} differ${rest.flat().length === 1 ? 's' : ''} from ${big!.join(', ')}`
      : `every site differs: ${r.groups.map((g) => g.join(' = ')).join(' vs ')}`;
  return `mismatch ${where}: ${who}`;
}

/** What `geomirror verify` is given (src/cli/verify-command.ts declares the options). */
export interface VerifyCliOptions {
  config: string;
  regionSize: string;
}

/** `geomirror verify`: its exit code (0 every replica agrees, 1 some range differs, 2 a site could not be asked). */
export async function runVerifyCommand(opts: VerifyCliOptions): Promise<number> {
  const fail = (msg: string, code: number): number => {
    process.stderr.write(`geomirror verify: ${msg}\n`);
    return code;
  };
  let config: ClusterConfig;
  try {
    config = loadConfig(opts.config);
  } catch (e) {
    return fail(e instanceof ConfigError ? e.message : String(e), 2);
  }
  const regionBytes = parseSizeBytes(opts.regionSize);
  if (regionBytes === undefined || regionBytes === 0 || regionBytes % config.volume.blockSize !== 0) {
    return fail(`--region-size ${opts.regionSize} must be a size that is a multiple of the block size ${config.volume.blockSize}, e.g. 1MiB or 64KiB`, 2);
  }
  if (config.multiVolume) {
    // Several volumes (issue 20): each consistency group is one address space at every site
    // that carries it; verify them one after the other, naming volumes in what differs.
    let worst = 0;
    for (const g of config.groups) {
      const gc = groupClusterConfig(config, g);
      const code = await verifyOne(gc, regionBytes, g.name, (r) => `volume ${volumeAt(g, r.startBytes)}: ${formatMismatch(shiftRange(r, volumeOffset(g, r.startBytes)))}`);
      worst = Math.max(worst, code);
    }
    return worst;
  }
  return verifyOne(config, regionBytes, undefined, formatMismatch);
}

/** The volume of group `g` holding byte `at` of the group's address space. */
function volumeAt(g: GroupConfig, at: number): string {
  return [...g.volumes].reverse().find((v) => v.offsetBytes <= at)?.name ?? g.volumes[0]!.name;
}
function volumeOffset(g: GroupConfig, at: number): number {
  return [...g.volumes].reverse().find((v) => v.offsetBytes <= at)?.offsetBytes ?? 0;
}
function shiftRange(r: MismatchRange, by: number): MismatchRange {
  return { ...r, startBytes: r.startBytes - by, endBytes: r.endBytes - by };
}

/** Verifies one address space (the volume, or one consistency group's): 0 agree, 1 differ, 2 incomplete. */
async function verifyOne(config: ClusterConfig, regionBytes: number, group: string | undefined, describe: (r: MismatchRange) => string): Promise<number> {
  const fail = (msg: string, code: number): number => {
    process.stderr.write(`geomirror verify: ${msg}\n`);
    return code;
  };
  const what = group === undefined ? config.volume.name : `group ${group} (${config.volumes.map((v) => v.name).join(', ')})`;
  let sites: VerifySite[];
  try {
    sites = verifySites(config);
  } catch (e) {
    return fail((e as Error).message, 2);
  }
  process.stderr.write(`verifying ${formatBytes(config.volume.sizeBytes)} of ${what} on ${sites.map((s) => s.name).join(', ')} in ${formatBytes(regionBytes)} regions (${checksumAlgorithm})\n`);
  const progress = progressReporter(config.volume.sizeBytes);
  let result: VerifyResult;
  try {
    result = await verifyCluster({ config, regionBytes, onProgress: progress.update, ...(group !== undefined ? { group } : {}) });
  } finally {
    progress.stop();
  }
  if (result.kind === 'unreachable') return fail(`site ${result.site} (${result.admin}): ${result.error}; the verify${group !== undefined ? ` of group ${group}` : ''} is incomplete`, 2);
  if (result.kind === 'agree') {
    process.stdout.write(`${group !== undefined ? `group ${group}: ` : ''}all ${sites.length} replicas agree: ${result.regions} regions of ${formatBytes(regionBytes)} compared\n`);
    return 0;
  }
  for (const r of result.ranges) process.stdout.write(`${describe(r)}\n`);
  const bad = result.ranges.reduce((n, r) => n + r.regions, 0);
  process.stdout.write(`${group !== undefined ? `group ${group}: ` : ''}${bad} of ${result.regions} regions differ, in ${result.ranges.length} range${result.ranges.length === 1 ? '' : 's'}\n`);
  return 1;
}

/** A bar on a terminal; on a pipe, a plain line each 10% so logs stay readable. */
function progressReporter(totalBytes: number): { update: (done: number, total: number, bad: number) => void; stop: () => void } {
  if (process.stderr.isTTY) {
    const bar = new cliProgress.SingleBar(
      { stream: process.stderr, format: 'verify [{bar}] {percentage}% | {doneText} of {totalText} | {bad} mismatching region(s)', hideCursor: true },
      cliProgress.Presets.shades_classic,
    );
    bar.start(totalBytes, 0, { doneText: formatBytes(0), totalText: formatBytes(totalBytes), bad: 0 });
    return { update: (done, _t, bad) => bar.update(done, { doneText: formatBytes(done), bad }), stop: () => bar.stop() };
  }
  let nextTenth = 1;
  return {
    update: (done, total, bad) => {
      if (done < (nextTenth * total) / 10 && done < total) return;
      nextTenth = Math.floor((10 * done) / total) + 1;
      process.stderr.write(`verify: ${Math.floor((100 * done) / total)}% (${formatBytes(done)} of ${formatBytes(total)}), ${bad} mismatching region(s)\n`);
    },
    stop: () => undefined,
  };
}
