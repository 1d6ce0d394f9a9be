// The cluster file (DESIGN.md "Configuration"): one YAML file describes every site of a
// cluster. This module is the edge where it is validated, once: every problem found is named
// by its key path (`sites.east.cache.size`) and line, with the fix, and all problems are
// reported together so an operator fixes the file in one pass. What comes out is a typed,
// normalized ClusterConfig (sizes in bytes, durations in ms, device paths absolute) that the
// site runtime can trust without re-checking. (It runs past 450 lines: one validator per key,
// each with its own error text and fix, kept in one file so every check of the file is found in
// one place; the schema and key list live in config-schema.ts and config-keys.ts.)
//
// Claims served: 1 (a local site and at least one remote mirror site, named and addressed),
// 5-7 (site locations, checked by src/core/geo.ts), 8/13 (standby-for), 14 (relay chains).
import { readFileSync } from 'node:fs';
import { dirname, isAbsolute, join, resolve } from 'node:path';
import { LineCounter, parseDocument, isMap, isPair, isScalar, type Document } from 'yaml';
import { parseSizeBytes, parseDurationMs, sizeSyntaxText } from './units.js';
import { closest, didYouMean } from './suggest.js';
import { DeviceStringError, formatDeviceString, parseDeviceString, type DeviceSpec } from '../../hal/devstring.js';
import { checkCoordinatorSites, parseCoordinator, parseEndpoints, type CoordinatorConfig } from './config-coordinator.js';
import { cacheKeys, clusterKeys, locationKeys, nameLengthMax, namePattern, nbdTlsKeys, nbdTlsModes, roles, secretBytesMin, siteKeys, tlsKeys, transports, volumeKeys, type KeyTable, type Role, type SiteKey } from './config-keys.js';

export { nameLengthMax, roles, secretBytesMin, type Role };
export type RelayAck = (typeof siteKeys)['relay-ack']['values'][number];
export type OnMirrorLoss = (typeof siteKeys)['on-mirror-loss']['values'][number];

/** Default time without heartbeats before a standby promotes itself (claim 13 v). */
export const failoverTimeoutMsDefault = parseDurationMs(siteKeys['failover-timeout'].default)!;
export const blockSizes = volumeKeys.blockSize.values;
export const blockSizeDefault = volumeKeys.blockSize.default;

export interface Address {
  host: string;
  port: number;
  /** `host:port` as written (IPv6 hosts in brackets), for messages and connect strings. */
  text: string;
}

/**
 * A device of the file, parsed by the HAL's own parser (hal/devstring.ts) with relative
 * loopback/serial paths made absolute; `text` is its canonical string for logs and status.
 */
export type SiteDevice = DeviceSpec & { readonly text: string };

export interface CacheSpec {
  device: SiteDevice;
  sizeBytes: number;
}

export interface Location {
  lat: number;
  lon: number;
}

export interface SiteConfig {
  name: string;
  role: Role;
  listen?: Address;
  nbd?: Address;
  admin?: Address;
  cache?: CacheSpec;
  /** Several entries form a RAID-1 array inside the site; empty for a witness or a copy-less relay. */
  storage: SiteDevice[];
  /**
   * Fan-out targets. A primary may list mirrors, relays and standbys (a standby needs the
   * writes to hold a copy, claim 9); a standby's default is the primary's list minus itself.
   */
  mirrors: string[];
  /** Relay: next hop of the cascade (claim 14). */
  forward?: string;
  /** Standby: the primary it backs up (claim 8). */
  standbyFor?: string;
  relayAck: RelayAck;
  onMirrorLoss: OnMirrorLoss;
  failoverTimeoutMs: number;
  location?: Location;
  /** Resync copy rate per mirror, bytes per second (undefined: the core's default). */
  resyncBytesPerSec?: number;
  /** Peer name -> address this site dials instead of that peer's `listen`. */
  connect: Record<string, Address>;
  /** Primary: its standby (a site with `standby-for:` this primary), filled in by the loader. */
  standby?: string;
  /** Witness sites of the cluster (filled in by the loader): the primary keeps a link to each, a standby asks them. */
  witnesses: string[];
  /** TLS on the NBD export (default off; an export bound off-loopback warns unless required). */
  nbdTls: NbdTlsConfig;
  /** With `volumes:`: each carried volume's devices ({volume} filled in, or the storage mapping). */
  volumeStorage?: Record<string, SiteDevice[]>;
  /**
   * In a group's config (src/site/volumes.ts) of several volumes: RAID-1 member i is the
   * concatenation of storageParts[i] (the group's volumes' i-th devices, in group order).
   * Each part holds `partBlocks[j]` blocks.
   */
  storageParts?: { devices: SiteDevice[]; blockCounts: number[] }[];
  /** `coordinator-endpoints:` this site's own etcd endpoints (issue 20 item 3). */
  coordinatorEndpoints?: string[];
}

export interface SecretSpec {
  /** `file`: read at site start from `path`; `inline`: the hex key is in the config file. */
  source: 'file' | 'inline';
  path?: string;
  inlineHex?: string;
}

/** How sites talk to each other: mutual TLS 1.3 (default) or lab-mode plain TCP (issue 17). */
export type Transport = (typeof transports)[number];

/**
 * Where the cluster's certificates live (src/site/pki.ts). Default: files beside the `secret:`
 * file (or the cluster file, for an inline secret): ca.crt, ca.key, site-NAME.crt, site-NAME.key.
 */
export interface TlsFiles {
  /** Trusted CA certificate(s), PEM; during a CA roll it holds the old and the new CA. */
  caCert: string;
  /** The CA's private key: only where certificates are issued (`geomirror pki`), never needed by a running site. */
  caKey: string;
  /** Folder of site-NAME.crt / site-NAME.key (and client-NAME/ folders). */
  dir: string;
}

export type NbdTlsMode = (typeof nbdTlsModes)[number];

/** `nbd-tls:` of a site's export (NBD_OPT_STARTTLS, x509 and PSK). */
export interface NbdTlsConfig {
  mode: NbdTlsMode;
  /** PSK file in the `identity:hexkey` format of nbdinfo --tls-psk-file / qemu tls-creds-psk. */
  psk?: string;
  /** Server certificate and key for x509 (default: the site's own, from the cluster CA). */
  cert?: string;
  key?: string;
  /** CA that client certificates must chain to (default: the cluster CA). */
  ca?: string;
  /** Client allow-list: certificate CNs or PSK identities; absent = any client the CA or PSK file admits. */
  allow?: string[];
}

export interface VolumeConfig {
  name: string;
  sizeBytes: number;
  blockSize: (typeof blockSizes)[number];
  blockCount: number;
}

/** A volume of a `volumes:` list (issue 20): its consistency group and the sites that carry it. */
export interface ListedVolume extends VolumeConfig {
  group: string;
  /** Sites that carry it, in file order (default: every site with storage). */
  sites: string[];
  /** Where it sits in its group's address space (src/site/volumes.ts). */
  offsetBytes: number;
}

/**
 * A consistency group (issue 20 item 2): its volumes are replicated as one stream over one
 * address space, each volume a slice of it, so they share one (epoch, seq) order, one journal
 * and one flush barrier. A cluster file with `volume:` has one group, named after the volume.
 */
export interface GroupConfig {
  name: string;
  /** Its number on the wire (HELLO's group, data frames' volumeId): file order, 0 first. */
  index: number;
  volumes: ListedVolume[];
  /** The group's address space: its volumes back to back. */
  volume: VolumeConfig;
  sites: string[];
}

export interface ClusterConfig {
  /** Absolute path of the cluster file and its folder (relative paths resolve against it). */
  file: string;
  dir: string;
  cluster: string;
  secret: SecretSpec;
  /** `transport:` (default tls). */
  transport: Transport;
  tls: TlsFiles;
  /**
   * The volume, with `volume:`. With `volumes:` (several volumes, issue 20), the address space of
   * the first consistency group: code that serves one group takes its config from
   * src/site/volumes.ts (groupConfig), where this is the group's own.
   */
  volume: VolumeConfig;
  /** Every volume, in file order (one, from `volume:`, in a single-volume file). */
  volumes: ListedVolume[];
  /** Consistency groups in order of first appearance; one in a single-volume file. */
  groups: GroupConfig[];
  /** True when the file uses `volumes:` (state files and device strings are per group then). */
  multiVolume: boolean;
  /** Sites in file order. */
  sites: Record<string, SiteConfig>;
  siteNames: string[];
  primary: string;
  /** Legal but suspicious (a mirror nobody sends to): logged at start, not refused. */
  warnings: string[];
  /** `coordinator:` etcd arbitrates failover instead of the built-in vote (issue 20 item 3). */
  coordinator?: CoordinatorConfig;
}

/** A problem in the cluster file: `path` is the key path, `message` says what and the fix. */
export interface ConfigProblem {
  path: string;
  message: string;
  /** 1-based line and column in the file, where known. */
  line?: number;
  column?: number;
}

export class ConfigError extends Error {
  readonly file: string;
  readonly problems: ConfigProblem[];
  constructor(file: string, problems: ConfigProblem[]) {
    const lines = problems.map((p) => `  ${file}${p.line === undefined ? '' : `:${p.line}${p.column === undefined ? '' : `:${p.column}`}`}: ${p.message}`);
    super(`${file}: ${problems.length} problem(s) in the cluster file:\n${lines.join('\n')}`);
    this.name = 'ConfigError';
    this.file = file;
    this.problems = problems;
  }
}

const keysOf = (table: KeyTable): readonly string[] => Object.keys(table);
const topKeyNames = keysOf(clusterKeys);
const requiredTopKeyNames = topKeyNames.filter((k) => (clusterKeys as KeyTable)[k]!.required === true);
const tlsKeyNames = keysOf(tlsKeys);
const nbdTlsKeyNames = keysOf(nbdTlsKeys);
const volumeKeyNames = keysOf(volumeKeys);
const cacheKeyNames = keysOf(cacheKeys);
const locationKeyNames = keysOf(locationKeys);
const siteKeyNames = Object.keys(siteKeys) as SiteKey[];
const relayAcks: readonly string[] = siteKeys['relay-ack'].values;
const mirrorLossPolicies: readonly string[] = siteKeys['on-mirror-loss'].values;

/** Reads, parses and validates a cluster file. Throws ConfigError naming every problem. */
export function loadConfig(file: string): ClusterConfig {
  const abs = resolve(file);
  let text: string;
  try {
    text = readFileSync(abs, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String(err);
    throw new ConfigError(abs, [{ path: '(file)', message: `cannot read the cluster file: ${why}` }]);
  }
  return parseConfig(text, abs);
}

/** Validates cluster-file text; `file` names it in messages and anchors relative paths. */
export function parseConfig(text: string, file: string): ClusterConfig {
  const abs = resolve(file);
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, uniqueKeys: true, prettyErrors: false });
  if (doc.errors.length > 0) {
    throw new ConfigError(
      abs,
      doc.errors.map((e) => {
        // With prettyErrors off the error has its offset only: turn it into line and column.
        const at = e.linePos?.[0] ?? lineCounter.linePos(e.pos[0]);
        return { path: '(yaml)', message: `not valid YAML: ${e.message.split('\n')[0]}`, line: at.line, column: at.col };
      }),
    );
  }
  const v = new Validator(doc, lineCounter, dirname(abs));
  const config = v.cluster(doc.toJS({ maxAliasCount: 100 }) as unknown, abs);
  if (v.problems.length > 0 || config === undefined) throw new ConfigError(abs, v.problems);
  return config;
}

type Obj = Record<string, unknown>;

function isObj(x: unknown): x is Obj {
  return typeof x === 'object' && x !== null && !Array.isArray(x);
}

function show(x: unknown): string {
  return typeof x === 'string' ? JSON.stringify(x) : JSON.stringify(x) ?? String(x);
}

/** Collects problems while walking the parsed file; each check names its key path. */
class Validator {
  readonly problems: ConfigProblem[] = [];
  /** Every site name in the file, including sites that failed validation. */
  private declared: string[] = [];
  /** Sites whose storage: is a volume -> devices mapping (issue 20). */
  private readonly storageMaps = new Map<string, Record<string, SiteDevice[]>>();
  constructor(
    private readonly doc: Document,
    private readonly lines: LineCounter,
    private readonly dir: string,
  ) {}

  private lineOf(keys: (string | number)[]): { line: number; col: number } | undefined {
    // Point at the key of the deepest pair that exists, so a missing key points at its parent.
    for (let n = keys.length; n > 0; n--) {
      const parent = n === 1 ? this.doc.contents : this.doc.getIn(keys.slice(0, n - 1), true);
      const last = keys[n - 1];
      if (isMap(parent)) {
        const pair = parent.items.find((p) => isPair(p) && isScalar(p.key) && p.key.value === last);
        const range = pair && isScalar(pair.key) ? pair.key.range : undefined;
        if (range) return this.lines.linePos(range[0]);
      }
      const node = this.doc.getIn(keys.slice(0, n), true) as { range?: [number, number, number] } | undefined;
      if (node?.range) return this.lines.linePos(node.range[0]);
    }
    return undefined;
  }

  fail(keys: (string | number)[], message: string): undefined {
    const path = pathText(keys);
    const at = this.lineOf(keys);
    this.problems.push({ path, message: `${path}: ${message}`, ...(at === undefined ? {} : { line: at.line, column: at.col }) });
    return undefined;
  }

  private unknownKeys(obj: Obj, keys: (string | number)[], known: readonly string[]): void {
    for (const k of Object.keys(obj)) {
      if (!known.includes(k)) {
        this.fail([...keys, k], `unknown key${didYouMean(k, known)}; known keys here: ${known.join(', ')}`);
      }
    }
  }

  private name(x: unknown, keys: (string | number)[], what: string): string | undefined {
    if (typeof x !== 'string' || !namePattern.test(x) || x.length > nameLengthMax) {
      return this.fail(
        keys,
        `${show(x)} is not a valid ${what}; use letters, digits, '.', '_' or '-' (at most ${nameLengthMax}, starting with a letter or digit)`,
      );
    }
    return x;
  }

  cluster(root: unknown, file: string): ClusterConfig | undefined {
    if (!isObj(root)) {
      this.fail([], 'the cluster file must be a YAML mapping with keys cluster, secret, volume, sites');
      return undefined;
    }
    this.unknownKeys(root, [], topKeyNames);
    for (const k of requiredTopKeyNames) if (!(k in root)) this.fail([k], 'is missing');
    const cluster = 'cluster' in root ? this.name(root.cluster, ['cluster'], 'cluster name') : undefined;
    const secret = 'secret' in root ? this.secret(root.secret) : undefined;
    if ('volume' in root && 'volumes' in root) this.fail(['volumes'], 'give either volume: (one volume) or volumes: (several), not both');
    else if (!('volume' in root) && !('volumes' in root)) this.fail(['volume'], 'is missing; e.g. volume: { name: vol0, size: 1GiB } (or volumes: [...] for several)');
    const listed = 'volumes' in root ? this.volumeList(root.volumes) : undefined;
    const single = 'volume' in root ? this.volume(root.volume, ['volume']) : undefined;
    const sites = 'sites' in root ? this.sites(root.sites) : undefined;
    let transport: Transport = clusterKeys.transport.default;
    if ('transport' in root) {
      const t = transports.find((v) => v === root.transport);
      if (t !== undefined) transport = t;
      else this.fail(['transport'], `${show(root.transport)} is not a transport; use tls (the default: mutual TLS 1.3 between sites) or insecure (lab mode: plain TCP, logged as a warning)`);
    }
    const tls = this.tlsFiles(root.tls, secret);
    const coordinator = 'coordinator' in root ? parseCoordinator(root.coordinator, (k, m) => this.fail(k, m), (p) => this.path(p)) : undefined;
    if (sites) checkCoordinatorSites(coordinator, 'coordinator' in root, sites, (k, m) => this.fail(k, m));
    // Cross-site checks run even when some site failed, so one pass names every problem.
    const primary = sites ? this.topology(sites) : undefined;
    const volumes = sites && primary !== undefined ? (listed !== undefined ? this.placeVolumes(listed, sites, primary) : single ? this.singleVolume(single, sites) : undefined) : undefined;
    if (!cluster || !secret || !volumes || !sites || primary === undefined || this.problems.length > 0) return undefined;
    const warnings = reachabilityWarnings(sites, primary);
    if (coordinator && sites[primary]!.standby === undefined) warnings.push(`coordinator: ${primary} holds the etcd lease, but no site has role: standby, so nobody can take over from it`);
    const groups = groupsOf(volumes.list, sites);
    return { file, dir: this.dir, cluster, secret, transport, tls, volume: groups[0]!.volume, volumes: volumes.list, groups, multiVolume: listed !== undefined, sites, siteNames: Object.keys(sites), primary, warnings, ...(coordinator ? { coordinator } : {}) };
  }

  /** `tls:` paths; each defaults to a file beside the secret file (or the cluster file). */
  private tlsFiles(x: unknown, secret: SecretSpec | undefined): TlsFiles {
    const base = secret?.source === 'file' && secret.path !== undefined ? dirname(secret.path) : this.dir;
    const out: TlsFiles = { caCert: join(base, 'ca.crt'), caKey: join(base, 'ca.key'), dir: base };
    if (x === undefined) return out;
    if (!isObj(x)) {
      this.fail(['tls'], 'must be a mapping, e.g. { ca: ./data/ca.crt, ca-key: ./data/ca.key, dir: ./data }');
      return out;
    }
    this.unknownKeys(x, ['tls'], tlsKeyNames);
    for (const [key, field] of [['ca', 'caCert'], ['ca-key', 'caKey'], ['dir', 'dir']] as const) {
      if (!(key in x)) continue;
      const v = x[key];
      if (typeof v !== 'string' || v.trim() === '') this.fail(['tls', key], `${show(v)} is not a path`);
      else out[field] = this.path(v.trim());
    }
    if ('dir' in x && !('ca' in x)) out.caCert = join(out.dir, 'ca.crt');
    if ('dir' in x && !('ca-key' in x)) out.caKey = join(out.dir, 'ca.key');
    return out;
  }

  private nbdTls(x: unknown, keys: (string | number)[]): NbdTlsConfig {
    const mode = (v: unknown): NbdTlsMode | undefined => nbdTlsModes.find((m) => m === v);
    if (typeof x === 'string' || typeof x === 'boolean') {
      const m = mode(x === false ? 'off' : x);
      if (m === undefined) this.fail(keys, `${show(x)} is not an NBD TLS mode; use off, allow or require (or a mapping with mode, psk, cert, key, ca, allow)`);
      return { mode: m ?? 'off' };
    }
    if (!isObj(x)) {
      this.fail(keys, 'must be off, allow, require or a mapping, e.g. { mode: require, psk: ./data/nbd.psk, allow: [backup-host] }');
      return { mode: 'off' };
    }
    this.unknownKeys(x, keys, nbdTlsKeyNames);
    const out: NbdTlsConfig = { mode: nbdTlsKeys.mode.default };
    if ('mode' in x) {
      const m = mode(x.mode);
      if (m === undefined) this.fail([...keys, 'mode'], `${show(x.mode)} is not an NBD TLS mode; use off, allow or require`);
      else out.mode = m;
    }
    for (const k of ['psk', 'cert', 'key', 'ca'] as const) {
      if (!(k in x)) continue;
      const v = x[k];
      if (typeof v !== 'string' || v.trim() === '') this.fail([...keys, k], `${show(v)} is not a path`);
      else out[k] = this.path(v.trim());
    }
    if ((out.cert === undefined) !== (out.key === undefined)) this.fail([...keys, out.cert === undefined ? 'cert' : 'key'], 'cert and key go together (the server certificate and its private key)');
    if ('allow' in x) {
      const a = x.allow;
      if (!Array.isArray(a) || a.some((n) => typeof n !== 'string' || n === '')) this.fail([...keys, 'allow'], 'must be a list of client names (certificate CNs or PSK identities), e.g. [backup-host]');
      else out.allow = a as string[];
    }
    return out;
  }

  private secret(x: unknown): SecretSpec | undefined {
    if (typeof x !== 'string' || x.trim() === '') {
      return this.fail(['secret'], `${show(x)} is not a key; use file:PATH (create it with geomirror keygen --out PATH) or the hex key itself`);
    }
    if (x.startsWith('file:')) {
      const p = x.slice('file:'.length).trim();
      if (p === '') return this.fail(['secret'], 'file: needs a path, e.g. file:./data/cluster.key');
      return { source: 'file', path: this.path(p) };
    }
    const hex = x.trim();
    if (!/^([0-9a-fA-F]{2})+$/.test(hex) || hex.length / 2 < secretBytesMin) {
      return this.fail(
        ['secret'],
        `an inline key must be at least ${secretBytesMin} bytes of hex (geomirror keygen prints one); for a key file write file:PATH`,
      );
    }
    return { source: 'inline', inlineHex: hex.toLowerCase() };
  }

  private volume(x: unknown, at: (string | number)[], listed = false): (VolumeConfig & { group?: string; sites?: string[] }) | undefined {
    if (!isObj(x)) return this.fail(at, 'must be a mapping, e.g. { name: vol0, size: 1GiB, blockSize: 4096 }');
    this.unknownKeys(x, at, listed ? volumeKeyNames : volumeKeyNames.filter((k) => k !== 'group' && k !== 'sites'));
    const name = 'name' in x ? this.name(x.name, [...at, 'name'], 'volume name') : this.fail([...at, 'name'], 'is missing');
    let blockSize: (typeof blockSizes)[number] | undefined = blockSizeDefault;
    if ('blockSize' in x) {
      blockSize = blockSizes.find((b) => b === x.blockSize);
      if (blockSize === undefined) this.fail([...at, 'blockSize'], `${show(x.blockSize)} is not supported; use ${blockSizes.join(' or ')}`);
    }
    const sizeBytes = 'size' in x ? this.size(x.size, [...at, 'size']) : this.fail([...at, 'size'], 'is missing; e.g. size: 1GiB');
    const group = 'group' in x ? this.name(x.group, [...at, 'group'], 'group name') : undefined;
    const sites = 'sites' in x ? this.siteList(x.sites, [...at, 'sites']) : undefined;
    if (sizeBytes === undefined || blockSize === undefined || name === undefined) return undefined;
    if (sizeBytes === 0 || sizeBytes % blockSize !== 0) {
      return this.fail([...at, 'size'], `${show(x.size)} must be a positive multiple of blockSize ${blockSize}`);
    }
    return { name, sizeBytes, blockSize, blockCount: sizeBytes / blockSize, ...(group !== undefined ? { group } : {}), ...(sites !== undefined ? { sites } : {}) };
  }

  /** `volumes:` (issue 20): names unique, at most volumesMax, each a valid volume. */
  private volumeList(x: unknown): (VolumeConfig & { group?: string; sites?: string[] })[] | undefined {
    if (!Array.isArray(x) || x.length === 0) return this.fail(['volumes'], 'must be a non-empty list of volumes, e.g. [{ name: db-log, size: 1GiB, group: db }, { name: db-data, size: 8GiB, group: db }]');
    if (x.length > volumesMax) return this.fail(['volumes'], `lists ${x.length} volumes; a cluster carries at most ${volumesMax} (each costs every site a journal share, links and memory)`);
    const out: (VolumeConfig & { group?: string; sites?: string[] })[] = [];
    x.forEach((v, i) => {
      const vol = this.volume(v, ['volumes', i], true);
      if (vol === undefined) return;
      if (out.some((o) => o.name === vol.name)) this.fail(['volumes', i, 'name'], `${vol.name} is listed twice; volume names are NBD export names and must be unique`);
      else out.push(vol);
    });
    return out.length === x.length ? out : undefined;
  }

  /** The one volume of a `volume:` file: every storage-carrying site carries it. */
  private singleVolume(v: VolumeConfig, sites: Record<string, SiteConfig>): { list: ListedVolume[] } {
    return { list: [{ ...v, group: v.name, sites: Object.values(sites).filter(carriesStorage).map((s) => s.name), offsetBytes: 0 }] };
  }

  /**
   * Places listed volumes: which sites carry each (the primary and its standby carry all; a relay
   * carries what its next hop carries), each site's devices per volume ({volume} in a storage
   * string, or storage as a volume -> devices mapping), group rules (one block size and one site
   * set per group; a group of several volumes aligned to regions), and per-site bounds.
   */
  private placeVolumes(vols: (VolumeConfig & { group?: string; sites?: string[] })[], sites: Record<string, SiteConfig>, primary: string): { list: ListedVolume[] } | undefined {
    const storing = Object.values(sites).filter(carriesStorage).map((s) => s.name);
    const list: ListedVolume[] = vols.map((v) => ({ name: v.name, sizeBytes: v.sizeBytes, blockSize: v.blockSize, blockCount: v.blockCount, group: v.group ?? v.name, sites: v.sites ?? storing, offsetBytes: 0 }));
    const standby = sites[primary]!.standby;
    list.forEach((v, i) => {
      for (const n of storing) {
        if (!v.sites.includes(n) && sites[n]!.role !== 'mirror' && n !== primary && n !== standby) this.fail(['volumes', i, 'sites'], `leaves out ${sites[n]!.role} ${n}; a volume may leave out mirror sites only (a relay forwards every volume on its chain)`);
      }
      for (const [j, n] of v.sites.entries()) {
        const s = sites[n];
        if (s === undefined) this.fail(['volumes', i, 'sites', j], `no site named ${show(n)}${didYouMean(n, Object.keys(sites))}; sites are ${Object.keys(sites).join(', ')}`);
        else if (!carriesStorage(s)) this.fail(['volumes', i, 'sites', j], `${n} is a ${s.role}${s.role === 'relay' ? ' without storage' : ''}: it keeps no copy of a volume`);
      }
      for (const must of [primary, ...(standby !== undefined ? [standby] : [])]) {
        if (!v.sites.includes(must)) this.fail(['volumes', i, 'sites'], `must include ${must}: the ${must === primary ? 'primary' : 'standby'} carries every volume (a failover moves them all)`);
      }
      for (const s of Object.values(sites)) {
        if (s.role === 'relay' && s.forward !== undefined && v.sites.includes(s.name) && !v.sites.includes(s.forward)) {
          this.fail(['volumes', i, 'sites'], `lists relay ${s.name} but not ${s.forward}, where ${s.name} forwards it; list both or neither`);
        }
      }
    });
    // Group rules: one block size and one site set per group (one stream reaches the same sites).
    const byGroup = new Map<string, ListedVolume[]>();
    for (const v of list) byGroup.set(v.group, [...(byGroup.get(v.group) ?? []), v]);
    for (const [g, members] of byGroup) {
      const first = members[0]!;
      const at = (v: ListedVolume): number => list.indexOf(v);
      for (const v of members.slice(1)) {
        if (v.blockSize !== first.blockSize) this.fail(['volumes', at(v), 'blockSize'], `${v.blockSize} differs from ${first.name}'s ${first.blockSize}; the volumes of group ${g} share one stream and one block size`);
        if (v.sites.join(',') !== first.sites.join(',')) this.fail(['volumes', at(v), 'sites'], `[${v.sites.join(', ')}] differs from ${first.name}'s [${first.sites.join(', ')}]; the volumes of group ${g} go to the same sites (one stream)`);
      }
      if (members.length > 1) {
        for (const v of members) {
          if (v.sizeBytes % groupAlignBytes !== 0) this.fail(['volumes', at(v), 'size'], `${v.sizeBytes} bytes is not a multiple of ${groupAlignBytes / 1024} KiB; a volume in a group of several is placed on region boundaries (e.g. ${Math.ceil(v.sizeBytes / groupAlignBytes) * groupAlignBytes / 1024 ** 2} MiB)`);
        }
      }
      if (members.length > groupVolumesMax) this.fail(['volumes', at(members[groupVolumesMax]!), 'group'], `group ${g} has ${members.length} volumes; a group holds at most ${groupVolumesMax}`);
    }
    // Each storage-carrying site: its devices per volume.
    for (const s of Object.values(sites)) {
      const carried = list.filter((v) => v.sites.includes(s.name));
      if (carried.length > siteVolumesMax) this.fail(['sites', s.name], `carries ${carried.length} volumes; a site carries at most ${siteVolumesMax}`);
      if (!carriesStorage(s)) continue;
      if (s.cache !== undefined && carried.length > 0 && s.cache.sizeBytes / carried.length < cacheShareBytesMin) {
        this.fail(['sites', s.name, 'cache', 'size'], `${s.cache.sizeBytes} bytes shared by ${carried.length} volumes is ${Math.floor(s.cache.sizeBytes / carried.length)} bytes each; each volume needs at least ${cacheShareBytesMin / 1024 ** 2} MiB of cache (grow cache.size to ${(cacheShareBytesMin * carried.length) / 1024 ** 2}MiB)`);
      }
      const byVolume: Record<string, SiteDevice[]> = {};
      const map = this.storageMaps.get(s.name);
      if (map !== undefined) {
        for (const v of carried) {
          if (map[v.name] === undefined) this.fail(['sites', s.name, 'storage'], `has no devices for volume ${v.name}; add ${v.name}: ["loopback:./data/${s.name}-${v.name}.img"]`);
          else byVolume[v.name] = map[v.name]!;
        }
        for (const name of Object.keys(map)) {
          if (!carried.some((v) => v.name === name)) this.fail(['sites', s.name, 'storage', name], `${s.name} does not carry a volume named ${name}${didYouMean(name, carried.map((v) => v.name))}`);
        }
      } else {
        s.storage.forEach((d, i) => {
          const templated = d.text.includes(volumePlaceholder);
          if (!templated && d.kind !== 'memory' && carried.length > 1) {
            this.fail(['sites', s.name, 'storage', i], `${d.text} would hold ${carried.length} volumes at once; put ${volumePlaceholder} in it (e.g. loopback:./data/${s.name}-${volumePlaceholder}.img) or map each volume to its devices`);
          }
        });
        for (const v of carried) byVolume[v.name] = s.storage.map((d) => (d.text.includes(volumePlaceholder) ? (parseSiteDevice(d.text.replaceAll(volumePlaceholder, v.name), (p) => p) as SiteDevice) : d));
      }
      // The members of a group's array are the volumes' devices side by side: equal counts.
      for (const [g, members] of byGroup) {
        const counts = members.filter((v) => byVolume[v.name] !== undefined).map((v) => byVolume[v.name]!.length);
        if (new Set(counts).size > 1) this.fail(['sites', s.name, 'storage'], `the volumes of group ${g} have ${counts.join(', ')} devices each at ${s.name}; give each the same number (a group's RAID-1 members span its volumes)`);
      }
      s.volumeStorage = byVolume;
      s.storage = carried.length > 0 ? byVolume[carried[0]!.name]! : s.storage;
    }
    return { list };
  }

  private size(x: unknown, keys: (string | number)[]): number | undefined {
    const bytes = parseSizeBytes(x);
    if (bytes === undefined) return this.fail(keys, `${show(x)} is not a size; use e.g. 64MiB: ${sizeSyntaxText}`);
    return bytes;
  }

  private path(p: string): string {
    return isAbsolute(p) ? p : resolve(this.dir, p);
  }

  private sites(x: unknown): Record<string, SiteConfig> | undefined {
    if (!isObj(x) || Object.keys(x).length === 0) {
      return this.fail(['sites'], 'must be a mapping of site name to site, with one primary and at least one mirror');
    }
    const out: Record<string, SiteConfig> = {};
    this.declared = Object.keys(x);
    for (const [name, body] of Object.entries(x)) {
      if (this.name(name, ['sites', name], 'site name') === undefined) continue;
      const site = this.site(name, body);
      if (site) out[name] = site;
    }
    return out;
  }

  private site(name: string, x: unknown): SiteConfig | undefined {
    const at = ['sites', name];
    if (!isObj(x)) return this.fail(at, `must be a mapping with at least role: (${roles.join(' | ')})`);
    this.unknownKeys(x, at, siteKeyNames);
    const role = roles.find((r) => r === x.role);
    if (role === undefined) {
      const hint = typeof x.role === 'string' ? didYouMean(x.role, roles) : '';
      return this.fail([...at, 'role'], `${'role' in x ? `${show(x.role)} is not a role` : 'is missing'}${hint}; use one of ${roles.join(', ')}`);
    }
    for (const key of siteKeyNames) {
      const rule: { allowed: readonly Role[]; required: readonly Role[] } = siteKeys[key].roles;
      if (key in x && !rule.allowed.includes(role)) {
        this.fail([...at, key], `a ${role} site has no ${key} (only ${rule.allowed.join(', ')} sites do)`);
      } else if (!(key in x) && rule.required.includes(role)) {
        this.fail([...at, key], `is missing; a ${role} site needs it`);
      }
    }
    const site: SiteConfig = {
      name,
      role,
      storage: [],
      mirrors: [],
      relayAck: siteKeys['relay-ack'].default,
      onMirrorLoss: siteKeys['on-mirror-loss'].default,
      failoverTimeoutMs: failoverTimeoutMsDefault,
      connect: {},
      witnesses: [],
      nbdTls: { mode: siteKeys['nbd-tls'].default },
    };
    for (const key of ['listen', 'nbd', 'admin'] as const) {
      if (key in x) {
        const a = this.address(x[key], [...at, key]);
        if (a) site[key] = a;
      }
    }
    if ('cache' in x) {
      const c = this.cache(x.cache, [...at, 'cache']);
      if (c) site.cache = c;
    }
    if ('storage' in x) {
      if (isObj(x.storage)) {
        // volume name -> devices (issue 20); checked against the volumes in placeVolumes
        const map: Record<string, SiteDevice[]> = {};
        for (const [vol, list] of Object.entries(x.storage)) map[vol] = this.storage(list, [...at, 'storage', vol]);
        this.storageMaps.set(name, map);
        site.storage = Object.values(map)[0] ?? [];
      } else site.storage = this.storage(x.storage, [...at, 'storage']);
    }
    if ('mirrors' in x) site.mirrors = this.siteList(x.mirrors, [...at, 'mirrors']);
    if ('forward' in x) site.forward = this.siteRef(x.forward, [...at, 'forward']);
    if ('standby-for' in x) site.standbyFor = this.siteRef(x['standby-for'], [...at, 'standby-for']);
    if ('relay-ack' in x) {
      if (relayAcks.includes(x['relay-ack'] as string)) site.relayAck = x['relay-ack'] as RelayAck;
      else this.fail([...at, 'relay-ack'], `${show(x['relay-ack'])} is not a relay-ack mode; use cached (ack once in the relay's cache, claim 14) or end-to-end`);
    }
    if ('on-mirror-loss' in x) {
      if (mirrorLossPolicies.includes(x['on-mirror-loss'] as string)) site.onMirrorLoss = x['on-mirror-loss'] as OnMirrorLoss;
      else this.fail([...at, 'on-mirror-loss'], `${show(x['on-mirror-loss'])} is not a policy; use block or degrade`);
    }
    if ('failover-timeout' in x) {
      const ms = parseDurationMs(x['failover-timeout']);
      if (ms === undefined || ms === 0) this.fail([...at, 'failover-timeout'], `${show(x['failover-timeout'])} is not a duration; use e.g. 5s or 500ms`);
      else site.failoverTimeoutMs = ms;
    }
    if ('location' in x) {
      const l = this.location(x.location, [...at, 'location']);
      if (l) site.location = l;
    }
    if ('resync-rate' in x) {
      const r = this.size(x['resync-rate'], [...at, 'resync-rate']);
      if (r === 0) this.fail([...at, 'resync-rate'], 'must be more than 0 bytes per second, e.g. 64MiB');
      else if (r !== undefined) site.resyncBytesPerSec = r;
    }
    if ('nbd-tls' in x) site.nbdTls = this.nbdTls(x['nbd-tls'], [...at, 'nbd-tls']);
    if ('coordinator-endpoints' in x) {
      const eps = parseEndpoints(x['coordinator-endpoints'], [...at, 'coordinator-endpoints'], (k, m) => this.fail(k, m));
      if (eps) site.coordinatorEndpoints = eps.urls;
    }
    if ('connect' in x) {
      const c = x.connect;
      if (!isObj(c)) {
        this.fail([...at, 'connect'], 'must be a mapping of peer site -> HOST:PORT, e.g. connect: { east: 10.0.0.7:7401 }');
      } else {
        for (const [peer, addr] of Object.entries(c)) {
          const a = this.address(addr, [...at, 'connect', peer]);
          if (a) site.connect[peer] = a;
        }
      }
    }
    return site;
  }

  private address(x: unknown, keys: (string | number)[]): Address | undefined {
    const a = typeof x === 'string' ? parseAddress(x) : undefined;
    if (a === undefined) {
      return this.fail(keys, `${show(x)} is not HOST:PORT; use e.g. 127.0.0.1:7401 (port 1-65535, IPv6 as [::1]:7401)`);
    }
    return a;
  }

  private cache(x: unknown, keys: (string | number)[]): CacheSpec | undefined {
    if (!isObj(x)) return this.fail(keys, 'must be a mapping, e.g. { device: "loopback:./data/east.cache", size: 64MiB }');
    this.unknownKeys(x, keys, cacheKeyNames);
    const device = 'device' in x ? this.device(x.device, [...keys, 'device']) : this.fail([...keys, 'device'], 'is missing');
    const sizeBytes = 'size' in x ? this.size(x.size, [...keys, 'size']) : this.fail([...keys, 'size'], 'is missing; e.g. size: 64MiB');
    if (sizeBytes === 0) return this.fail([...keys, 'size'], 'must be more than 0 bytes');
    return device && sizeBytes !== undefined ? { device, sizeBytes } : undefined;
  }

  private storage(x: unknown, keys: (string | number)[]): SiteDevice[] {
    if (!Array.isArray(x) || x.length === 0) {
      this.fail(keys, 'must be a non-empty list of device strings, e.g. ["loopback:./data/east.img"]');
      return [];
    }
    const out: SiteDevice[] = [];
    x.forEach((d, i) => {
      const spec = this.device(d, [...keys, i]);
      if (spec) out.push(spec);
    });
    return out;
  }

  private device(x: unknown, keys: (string | number)[]): SiteDevice | undefined {
    if (typeof x !== 'string') return this.fail(keys, `${show(x)} is not a device string; use ${deviceForms}`);
    const parsed = parseSiteDevice(x, (p) => this.path(p));
    if (typeof parsed === 'string') return this.fail(keys, parsed);
    return parsed;
  }

  private siteList(x: unknown, keys: (string | number)[]): string[] {
    if (!Array.isArray(x)) {
      this.fail(keys, 'must be a list of site names, e.g. [east, west]');
      return [];
    }
    const out: string[] = [];
    x.forEach((n, i) => {
      const name = this.siteRef(n, [...keys, i]);
      if (name === undefined) return;
      if (out.includes(name)) this.fail([...keys, i], `${name} is listed twice`);
      else out.push(name);
    });
    return out;
  }

  private siteRef(x: unknown, keys: (string | number)[]): string | undefined {
    if (typeof x !== 'string' || x === '') return this.fail(keys, `${show(x)} is not a site name`);
    return x;
  }

  private location(x: unknown, keys: (string | number)[]): Location | undefined {
    if (!isObj(x)) return this.fail(keys, 'must be { lat: DEGREES, lon: DEGREES }, e.g. { lat: 51.5, lon: -0.13 }');
    this.unknownKeys(x, keys, locationKeyNames);
    const lat = this.degrees(x.lat, [...keys, 'lat'], locationKeys.lat.limit);
    const lon = this.degrees(x.lon, [...keys, 'lon'], locationKeys.lon.limit);
    return lat !== undefined && lon !== undefined ? { lat, lon } : undefined;
  }

  private degrees(x: unknown, keys: (string | number)[], limit: number): number | undefined {
    if (typeof x !== 'number' || !Number.isFinite(x) || Math.abs(x) > limit) {
      return this.fail(keys, `${x === undefined ? 'is missing' : `${show(x)} is not`} decimal degrees between -${limit} and ${limit}`);
    }
    return x;
  }

  /** Cross-site rules: references exist and fit, one primary, no forward cycles, no port clash. */
  private topology(sites: Record<string, SiteConfig>): string | undefined {
    const names = Object.keys(sites);
    const primaries = names.filter((n) => sites[n]!.role === 'primary');
    const incomplete = names.length < this.declared.length;
    if (primaries.length > 1 || (primaries.length === 0 && !incomplete)) {
      this.fail(['sites'], primaries.length === 0 ? 'has no primary; exactly one site needs role: primary' : `has ${primaries.length} primaries (${primaries.join(', ')}); exactly one site may be role: primary (use standby for a backup, claim 8)`);
    }
    const ref = (from: string, keys: (string | number)[], target: string, want: readonly Role[], what: string): void => {
      const t = sites[target];
      if (t === undefined && this.declared.includes(target)) {
        return; // that site has its own problem reported already
      } else if (t === undefined) {
        this.fail(keys, `no site named ${show(target)}${didYouMean(target, this.declared)}; sites are ${this.declared.join(', ')}`);
      } else if (target === from) {
        this.fail(keys, `${from} cannot ${what} itself`);
      } else if (!want.includes(t.role)) {
        this.fail(keys, `${target} is a ${t.role}; ${what} needs a ${want.join(' or ')} site`);
      }
    };
    for (const s of Object.values(sites)) {
      for (const peer of Object.keys(s.connect)) {
        if (sites[peer] === undefined && !this.declared.includes(peer)) this.fail(['sites', s.name, 'connect', peer], `no site named ${show(peer)}${didYouMean(peer, this.declared)}; sites are ${this.declared.join(', ')}`);
        else if (peer === s.name) this.fail(['sites', s.name, 'connect', peer], `${s.name} does not connect to itself`);
      }
      s.mirrors.forEach((m, i) => ref(s.name, ['sites', s.name, 'mirrors', i], m, s.role === 'primary' ? ['mirror', 'relay', 'standby'] : ['mirror', 'relay'], 'mirror to'));
      if (s.forward !== undefined) ref(s.name, ['sites', s.name, 'forward'], s.forward, ['mirror', 'relay'], 'forward to');
      if (s.standbyFor !== undefined) ref(s.name, ['sites', s.name, 'standby-for'], s.standbyFor, ['primary'], 'stand by for');
      if (s.mirrors.length > fanoutMirrorsMax) this.fail(['sites', s.name, 'mirrors'], `lists ${s.mirrors.length} sites; a site fans out to at most ${fanoutMirrorsMax} (use relays for more)`);
      if (s.role === 'primary' && s.mirrors.length === 0 && !Object.values(sites).some((x) => x.role === 'standby')) {
        this.fail(['sites', s.name, 'mirrors'], 'a primary needs at least one mirror (claim 1); list them, e.g. mirrors: [east, west]');
      }
    }
    this.forwardCycles(sites);
    this.addressClashes(sites);
    if (this.problems.length > 0 || primaries.length !== 1) return undefined;
    const primary = primaries[0]!;
    const p = sites[primary]!;
    const standbys = names.filter((n) => sites[n]!.role === 'standby');
    if (standbys.length > 1) {
      this.fail(['sites', standbys[1]!, 'role'], `${standbys.join(' and ')} both stand by for ${primary}; one standby per primary (make the others mirrors: they stay in sync and are resynced by whichever site is promoted)`);
      return undefined;
    }
    if (standbys.length === 1) {
      // The standby holds a copy because the primary mirrors to it (claim 9): listing it in the
      // primary's mirrors is optional; it is added here so nobody can forget it.
      p.standby = standbys[0]!;
      if (!p.mirrors.includes(p.standby)) p.mirrors.push(p.standby);
      if (p.mirrors.length > fanoutMirrorsMax) {
        this.fail(['sites', primary, 'mirrors'], `lists ${p.mirrors.length - 1} sites and the standby ${p.standby} makes ${p.mirrors.length}; a site fans out to at most ${fanoutMirrorsMax} (use relays for more)`);
        return undefined;
      }
      if (p.listen === undefined) {
        this.fail(['sites', primary, 'listen'], `is missing; with a standby (${p.standby}) the primary needs a listen address: after a failover the new primary dials it there to resync it as a mirror`);
        return undefined;
      }
    }
    const witnesses = names.filter((n) => sites[n]!.role === 'witness');
    if (witnesses.length > 1) {
      this.fail(['sites', witnesses[1]!, 'role'], `${witnesses.join(' and ')} are both witnesses; one witness per cluster (it breaks a tie, a second one would make a new one)`);
      return undefined;
    }
    for (const s of Object.values(sites)) s.witnesses = witnesses;
    // A standby continues "the same protocol towards the same mirrors" (claim 13 vii).
    for (const s of Object.values(sites)) {
      if (s.role === 'standby' && s.mirrors.length === 0) {
        s.mirrors = sites[primary]!.mirrors.filter((m) => m !== s.name);
      }
    }
    return primary;
  }

  private forwardCycles(sites: Record<string, SiteConfig>): void {
    const reported = new Set<string>();
    for (const start of Object.values(sites)) {
      const chain: string[] = [];
      let cur: SiteConfig | undefined = start;
      while (cur?.forward !== undefined && !chain.includes(cur.name)) {
        chain.push(cur.name);
        cur = sites[cur.forward];
      }
      if (cur !== undefined && chain.includes(cur.name)) {
        const loop = chain.slice(chain.indexOf(cur.name));
        const key = [...loop].sort().join(',');
        if (!reported.has(key) && loop.length > 1) {
          reported.add(key);
          this.fail(['sites', loop[0]!, 'forward'], `forward chain loops (${[...loop, loop[0]].join(' -> ')}); a relay chain must end at a mirror site`);
        }
      }
    }
  }

  private addressClashes(sites: Record<string, SiteConfig>): void {
    const used: { key: (string | number)[]; a: Address }[] = [];
    for (const s of Object.values(sites)) {
      for (const k of ['listen', 'nbd', 'admin'] as const) {
        const a = s[k];
        if (a === undefined) continue;
        // A wildcard host overlaps every address of its own machine; sites with different
        // explicit hosts may be different machines, so only equal hosts clash across sites.
        const other = used.find((u) => u.a.port === a.port && (u.key[1] === s.name ? hostsOverlap(u.a.host, a.host) : canonicalHost(u.a.host) === canonicalHost(a.host)));
        if (other) this.fail(['sites', s.name, k], `${a.text} is already used by ${pathText(other.key)}; give each listen/nbd/admin its own port`);
        used.push({ key: ['sites', s.name, k], a });
      }
    }
  }
}

/** In a storage string of a multi-volume file: replaced by each volume's name. */
export const volumePlaceholder = '{volume}';
/** Bounds of issue 20 item 1, per cluster file, group and site. */
/** Mirrors one site fans out to (the core tracks which of them still owe a write's ack as one bit each: src/core/fanout.ts). */
export const fanoutMirrorsMax = 31;
export const volumesMax = 64;
export const groupVolumesMax = 16;
export const siteVolumesMax = 64;
/** Each volume a site carries gets at least this much of its cache (the journal of its group is the sum of its volumes' shares). */
export const cacheShareBytesMin = 4 * 1024 * 1024;
/** Volumes of a group of several are placed on region boundaries (core regionBytes, 64 KiB), so each region belongs to one volume. */
export const groupAlignBytes = 64 * 1024;

/** A site that keeps a copy: primary, mirror, standby, a relay with storage. */
function carriesStorage(s: SiteConfig): boolean {
  return s.role !== 'witness' && (s.role !== 'relay' || s.storage.length > 0);
}

/** Groups in order of first appearance, each volume at its offset in the group's address space. */
function groupsOf(list: ListedVolume[], sites: Record<string, SiteConfig>): GroupConfig[] {
  const groups: GroupConfig[] = [];
  for (const v of list) {
    let g = groups.find((x) => x.name === v.group);
    if (g === undefined) {
      g = { name: v.group, index: groups.length, volumes: [], volume: { name: v.group, sizeBytes: 0, blockSize: v.blockSize, blockCount: 0 }, sites: v.sites.filter((n) => sites[n] !== undefined) };
      groups.push(g);
    }
    v.offsetBytes = g.volume.sizeBytes;
    g.volumes.push(v);
    g.volume.sizeBytes += v.sizeBytes;
    g.volume.blockCount = g.volume.sizeBytes / g.volume.blockSize;
  }
  // A group of one volume is that volume (its name is the export's, and the state's).
  for (const g of groups) if (g.volumes.length === 1) g.volume = { name: g.volumes[0]!.name, sizeBytes: g.volumes[0]!.sizeBytes, blockSize: g.volumes[0]!.blockSize, blockCount: g.volumes[0]!.blockCount };
  return groups;
}

function pathText(keys: (string | number)[]): string {
  if (keys.length === 0) return '(top level)';
  return keys.map((k, i) => (typeof k === 'number' ? `[${k}]` : i === 0 ? k : `.${k}`)).join('');
}

function reachabilityWarnings(sites: Record<string, SiteConfig>, primary: string): string[] {
  const reached = new Set<string>([primary]);
  const walk = (name: string): void => {
    const s = sites[name];
    if (!s) return;
    for (const next of [...s.mirrors, ...(s.forward ? [s.forward] : [])]) {
      if (!reached.has(next)) {
        reached.add(next);
        walk(next);
      }
    }
  };
  walk(primary);
  return Object.values(sites)
    .filter((s) => (s.role === 'mirror' || s.role === 'relay') && !reached.has(s.name))
    .map((s) => `sites.${s.name}: the ${s.role} receives no writes: neither ${primary}'s mirrors nor any relay's forward lead to it`)
    .concat(
      Object.values(sites).some((s) => s.role === 'witness') && sites[primary]!.standby === undefined
        ? [`sites: witness ${Object.values(sites).filter((s) => s.role === 'witness').map((s) => s.name).join(', ')} has no standby to answer (a witness only breaks ties in a standby's failover vote)`]
        : [],
    );
}

const wildcardHosts = new Set(['0.0.0.0', '::', '']);
function canonicalHost(h: string): string {
  return h === 'localhost' ? '127.0.0.1' : h.toLowerCase();
}
function hostsOverlap(a: string, b: string): boolean {
  return wildcardHosts.has(a) || wildcardHosts.has(b) || canonicalHost(a) === canonicalHost(b);
}

const hostnamePattern = /^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$/;
const ipv4Pattern = /^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$/;

/** `127.0.0.1:7400`, `node-east.lan:7400`, `[::1]:7400`; undefined if malformed. */
/** HOST:PORT in shape only (parseAddress checks the host and port range too); the schema carries it. */
export const addressTextPattern = /^\s*(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]+)):(\d{1,5})\s*$/;

export function parseAddress(text: string): Address | undefined {
  const m = addressTextPattern.exec(text);
  if (!m) return undefined;
  const port = Number(m[3]);
  if (port < 1 || port > 65535) return undefined;
  if (m[1] !== undefined) {
    if (!m[1].includes(':')) return undefined;
    return { host: m[1], port, text: `[${m[1]}]:${port}` };
  }
  const host = m[2]!;
  const looksNumeric = /^[\d.]+$/.test(host);
  if (looksNumeric ? !ipv4Pattern.test(host) : !hostnamePattern.test(host)) return undefined;
  return { host, port, text: `${host}:${port}` };
}

/** Device schemes a cluster file may name (usb-sim: too, the USB simulator for tests and demos). */
export const deviceSchemes = ['memory', 'loopback', 'block', 'usb', 'serial'] as const;
export const deviceSchemesAccepted: readonly string[] = [...deviceSchemes, 'usb-sim'];
const deviceForms = 'memory:, loopback:PATH, block:/dev/NAME, usb:VID:PID[:SERIAL] or serial:PATH[?baud=N]';

/** Parses with the HAL's parser, makes paths absolute; a string is the problem. */
function parseSiteDevice(text: string, absolute: (p: string) => string): SiteDevice | string {
  let spec: DeviceSpec;
  try {
    spec = parseDeviceString(text);
  } catch (err) {
    if (!(err instanceof DeviceStringError)) throw err;
    const colon = text.indexOf(':');
    const scheme = colon < 0 ? text : text.slice(0, colon);
    const guess = deviceSchemes.includes(scheme as (typeof deviceSchemes)[number]) ? undefined : closest(scheme, deviceSchemes);
    return `${err.message}${guess ? ` (did you mean "${guess}:"?)` : ''}`;
  }
  if (spec.kind === 'loopback' || spec.kind === 'serial') spec = { ...spec, path: absolute(spec.path) };
  return { ...spec, text: formatDeviceString(spec) };
}

/**
 * The cluster key as bytes: the inline hex, or the hex in the key file (keygen's format).
 * Read at site start, not at load, so `geomirror status` works without the key.
 */
export function readSecret(config: ClusterConfig): Buffer {
  const { secret } = config;
  if (secret.source === 'inline') return Buffer.from(secret.inlineHex!, 'hex');
  let text: string;
  try {
    text = readFileSync(secret.path!, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const fix = code === 'ENOENT' ? `; create it with: geomirror keygen --out ${secret.path}` : '';
    throw new Error(`secret: cannot read key file ${secret.path} (${code ?? String(err)})${fix}`);
  }
  const hex = text.trim();
  if (!/^([0-9a-fA-F]{2})+$/.test(hex) || hex.length / 2 < secretBytesMin) {
    throw new Error(`secret: key file ${secret.path} must hold at least ${secretBytesMin} bytes as hex; make a new one with: geomirror keygen --out ${secret.path} --force`);
  }
  return Buffer.from(hex, 'hex');
}
