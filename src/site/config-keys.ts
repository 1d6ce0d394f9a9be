// Every key of the cluster file, in one table: its value type, allowed values, default, which
// roles may or must carry it, and its documentation. The loader (config.ts) takes its key lists,
// role rules, enums and defaults from here, and the JSON Schema for editors
// (docs/cluster.schema.json, made by config-schema.ts) is generated from the same table, so the
// two cannot drift. A key added to the loader is added here first.

export const roles = ['primary', 'mirror', 'relay', 'standby', 'witness'] as const;
export type Role = (typeof roles)[number];

/** Names end up in log lines, metric labels and NBD export names: keep them plain. */
export const nameLengthMax = 64;
/** Site, cluster and volume names: letters, digits, '.', '_' and '-', starting with a letter or digit. */
export const namePattern = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;
/** The cluster key must carry at least this much entropy (keygen writes 32 bytes). */
export const secretBytesMin = 16;

/**
 * How a value is read. Scalars: `name` (namePattern), `secret` (file:PATH or hex), `size`
 * (units.ts), `duration`, `address` (HOST:PORT), `device` (a device string), `degrees`,
 * `siteRef` (a site name), `enum` (one of `values`), `path` (a file or folder, relative to the
 * cluster file), `keyPrefix` (an etcd key prefix, /a/b). Lists: `devices` (or, with several
 * volumes, a mapping of volume name -> devices), `siteList`, `nameList` (non-empty strings),
 * `urlList` (http:// or https:// endpoints), `mapList` (mappings with keys from `keys`). Mappings: `map`
 * (keys from `keys`), `addressMap` (site name -> address), `siteMap` (site name -> site).
 * Either: `enumOrMap` (one of `values`, or a mapping with keys from `keys`).
 */
export type ValueType = 'name' | 'secret' | 'size' | 'duration' | 'address' | 'device' | 'degrees' | 'siteRef' | 'enum' | 'path' | 'devices' | 'siteList' | 'nameList' | 'urlList' | 'keyPrefix' | 'map' | 'mapList' | 'addressMap' | 'siteMap' | 'enumOrMap';

export interface KeySpec {
  readonly type: ValueType;
  /** One or two sentences for people: shown by editors from the schema. */
  readonly doc: string;
  /** `enum`, `enumOrMap`: the values accepted. */
  readonly values?: readonly (string | number | boolean)[];
  /** The value when the key is absent (as a user would write it). */
  readonly default?: string | number;
  /** `degrees`: the largest absolute value. */
  readonly limit?: number;
  /** `map`, `enumOrMap`: the keys of the nested mapping. */
  readonly keys?: KeyTable;
  /** Outside `sites`: the key must be present. */
  readonly required?: boolean;
  /** Site keys: which roles may carry it and which must (a key on another role is refused, not ignored). */
  readonly roles?: { readonly allowed: readonly Role[]; readonly required: readonly Role[] };
}

export type KeyTable = Readonly<Record<string, KeySpec>>;

const all = roles;
const replicating = ['primary', 'mirror', 'relay', 'standby'] as const;

export const volumeKeys = {
  name: { type: 'name', required: true, doc: 'Volume name; the NBD export is named after it (the empty export name selects it too).' },
  size: { type: 'size', required: true, doc: 'Volume size, a positive multiple of blockSize, e.g. 1G (sizes are binary: 1G = 1GB = 1GiB).' },
  blockSize: { type: 'enum', values: [512, 4096], default: 4096, doc: 'Logical block size in bytes.' },
  // Issue 20: volumes of one consistency group share one (epoch, seq) stream.
  group: { type: 'name', doc: 'volumes: consistency group; volumes of one group are written, flushed and failed over in one order (default: a group of its own, named after the volume).' },
  sites: { type: 'siteList', doc: 'volumes: the sites that carry this volume (default: every site with storage); the primary and its standby carry every volume.' },
} as const satisfies KeyTable;

export const cacheKeys = {
  device: { type: 'device', required: true, doc: 'The battery-backed cache device (claims 2, 4, 12), e.g. "loopback:./data/east.cache" or "memory:".' },
  size: { type: 'size', required: true, doc: 'Bytes of the cache device used for the write journal, e.g. 64M.' },
} as const satisfies KeyTable;

export const locationKeys = {
  lat: { type: 'degrees', limit: 90, required: true, doc: 'Latitude in decimal degrees.' },
  lon: { type: 'degrees', limit: 180, required: true, doc: 'Longitude in decimal degrees.' },
} as const satisfies KeyTable;

/** TLS modes of a site's NBD export (NBD_OPT_STARTTLS). */
export const nbdTlsModes = ['off', 'allow', 'require'] as const;

export const nbdTlsKeys = {
  mode: { type: 'enum', values: nbdTlsModes, default: 'require', doc: 'off, allow (clients choose) or require (clients must start TLS before anything else); require when the mapping is given without mode.' },
  psk: { type: 'path', doc: 'PSK file in the identity:hexkey format of nbdinfo --tls-psk-file and qemu tls-creds-psk.' },
  cert: { type: 'path', doc: 'Server certificate for x509 (default: the site\'s own, from the cluster CA); goes with key.' },
  key: { type: 'path', doc: 'Private key of cert.' },
  ca: { type: 'path', doc: 'CA that client certificates must chain to (default: the cluster CA).' },
  allow: { type: 'nameList', doc: 'Client allow-list: certificate CNs or PSK identities; absent: any client the CA or PSK file admits.' },
} as const satisfies KeyTable;

export const tlsKeys = {
  ca: { type: 'path', doc: 'Trusted CA certificate(s), PEM (during a CA roll: the old and the new CA). Default: ca.crt in dir.' },
  'ca-key': { type: 'path', doc: 'The CA\'s private key: only where certificates are issued (geomirror pki), never needed by a running site. Default: ca.key in dir.' },
  dir: { type: 'path', doc: 'Folder of site-NAME.crt and site-NAME.key (and client-NAME/ folders). Default: the folder of the secret: file (or of the cluster file, for an inline secret).' },
} as const satisfies KeyTable;

export const transports = ['tls', 'insecure'] as const;

// Issue 20 item 3: etcd as the failover arbiter instead of the built-in vote (config-coordinator.ts).
export const coordinatorKeys = {
  etcd: { type: 'urlList', required: true, doc: 'etcd endpoints, http://HOST:PORT, or https://HOST:PORT for TLS to etcd (one scheme for all).' },
  prefix: { type: 'keyPrefix', default: '/geomirror', doc: 'Key prefix: a group\'s keys are PREFIX/CLUSTER/GROUP/primary (the lease-held key) and PREFIX/CLUSTER/GROUP/epoch.' },
  'lease-ttl': { type: 'duration', default: '5s', doc: 'TTL of the primary\'s etcd lease, whole seconds from 2s: the primary stops acking host writes a margin before it lapses, and its standby can take over once it has.' },
  ca: { type: 'path', doc: 'https only: CA certificate the etcd server must chain to (default: the system CAs).' },
  cert: { type: 'path', doc: 'https only: client certificate for etcd client auth; goes with key.' },
  key: { type: 'path', doc: 'Private key of cert.' },
} as const satisfies KeyTable;

export const siteKeys = {
  role: { type: 'enum', values: roles, roles: { allowed: all, required: all }, doc: 'primary (takes host writes, fans them out), mirror, relay (cascade hop), standby (takes over from the primary) or witness (breaks failover ties).' },
  listen: { type: 'address', roles: { allowed: all, required: ['mirror', 'relay', 'standby', 'witness'] }, doc: 'HOST:PORT where this site takes replication links from its peers.' },
  // A mirror may export its replica read-only (DR checks, backups); only a primary serves writes.
  nbd: { type: 'address', roles: { allowed: ['primary', 'standby', 'mirror'], required: ['primary'] }, doc: 'HOST:PORT of the NBD export for hosts (read-only on a mirror).' },
  admin: { type: 'address', roles: { allowed: all, required: [] }, doc: 'HOST:PORT of the admin HTTP server: /status, /metrics, /events, /checksums.' },
  cache: { type: 'map', keys: cacheKeys, roles: { allowed: replicating, required: replicating }, doc: 'The battery-backed cache: { device, size }.' },
  storage: { type: 'devices', roles: { allowed: replicating, required: ['primary', 'mirror', 'standby'] }, doc: 'Storage devices; several form a RAID-1 array inside the site. Optional on a relay (a relay with storage keeps a full copy, claim 18). With volumes:, each string carries {volume} (one file per volume), or storage maps volume name -> devices.' },
  mirrors: { type: 'siteList', roles: { allowed: ['primary', 'standby'], required: [] }, doc: 'Sites this site sends every write to at once (fan-out, claim 1), at most 31 (beyond: use relays). A standby defaults to its primary\'s list minus itself.' },
  forward: { type: 'siteRef', roles: { allowed: ['relay'], required: ['relay'] }, doc: 'Relay: the next hop of the cascade (claim 14).' },
  'standby-for': { type: 'siteRef', roles: { allowed: ['standby'], required: ['standby'] }, doc: 'Standby: the primary it backs up (claim 8).' },
  'relay-ack': { type: 'enum', values: ['cached', 'end-to-end'], default: 'cached', roles: { allowed: ['relay'], required: [] }, doc: 'Relay: ack upstream once the write is in its cache (cached, claim 14) or only after the downstream acked (end-to-end).' },
  'on-mirror-loss': { type: 'enum', values: ['block', 'degrade'], default: 'degrade', roles: { allowed: ['primary', 'standby', 'relay'], required: [] }, doc: 'When a mirror is unreachable: host writes wait (block) or continue while its dirty regions are recorded and resynced later (degrade).' },
  'failover-timeout': { type: 'duration', default: '5s', roles: { allowed: ['standby'], required: [] }, doc: 'Standby: time without a frame from the primary before it asks the cluster and promotes itself (claim 13).' },
  location: { type: 'map', keys: locationKeys, roles: { allowed: all, required: [] }, doc: 'Where the site is, { lat, lon }: the primary checks mirror distances (claims 5-7).' },
  // Where this site dials a peer when that differs from the peer's own `listen` (NAT, a tunnel,
  // a port forward; tests route single links through a WAN emulator with it).
  connect: { type: 'addressMap', roles: { allowed: all, required: [] }, doc: 'Peer site -> HOST:PORT this site dials instead of the peer\'s listen (NAT, tunnels).' },
  // Bounds what a resync takes from host writes on a shared link.
  'resync-rate': { type: 'size', roles: { allowed: ['primary', 'standby'], required: [] }, doc: 'Bytes per second a resync may copy to each mirror, e.g. 16M.' },
  // TLS on the host-facing NBD export (issue 17): a mode, or a mapping with psk/cert/allow.
  'nbd-tls': { type: 'enumOrMap', values: [...nbdTlsModes, false], default: 'off', keys: nbdTlsKeys, roles: { allowed: ['primary', 'standby', 'mirror'], required: [] }, doc: 'TLS on the NBD export (NBD_OPT_STARTTLS): off (false), allow or require with the site\'s certificate, or a mapping { mode, psk, cert, key, ca, allow }. An export bound off-loopback without require is logged as a warning.' },
  // Issue 20 item 3: the etcd endpoints as seen from this site (another route, a local member).
  'coordinator-endpoints': { type: 'urlList', roles: { allowed: ['primary', 'standby'], required: [] }, doc: 'This site\'s own etcd endpoints instead of coordinator.etcd (same scheme), e.g. a route or a nearer etcd member.' },
} as const satisfies KeyTable;

export const clusterKeys = {
  cluster: { type: 'name', required: true, doc: 'Cluster name: in logs, metrics labels and status.' },
  secret: { type: 'secret', required: true, doc: 'The shared cluster key: file:PATH (geomirror keygen --out PATH makes one) or the hex key itself (at least 16 bytes).' },
  volume: { type: 'map', keys: volumeKeys, doc: 'The mirrored volume: { name, size, blockSize } (or several under volumes:).' },
  volumes: { type: 'mapList', keys: volumeKeys, doc: 'Several volumes on the same sites, each its own NBD export: a list of { name, size, blockSize, group, sites }. Storage strings carry {volume} (or storage maps volume -> devices).' },
  sites: { type: 'siteMap', keys: siteKeys, required: true, doc: 'Site name -> site: exactly one primary and at least one mirror.' },
  // Issue 17: links between sites are mutual TLS 1.3 unless the file says otherwise.
  transport: { type: 'enum', values: transports, default: 'tls', doc: 'tls: mutual TLS 1.3 between sites with certificates from the cluster CA (geomirror pki). insecure: plain TCP, lab use only, logged as a warning at every start.' },
  tls: { type: 'map', keys: tlsKeys, doc: 'Where the cluster\'s certificates live: { ca, ca-key, dir }. Default: beside the secret: file.' },
  coordinator: { type: 'map', keys: coordinatorKeys, doc: 'Optional: etcd decides failover instead of the built-in majority vote (no witness then): { etcd: [URL, ...], prefix, lease-ttl, ca, cert, key }. The primary holds an etcd lease; its standby takes over only after winning the lease key.' },
} as const satisfies KeyTable;

export type SiteKey = keyof typeof siteKeys;
