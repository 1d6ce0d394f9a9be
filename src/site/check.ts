// `geomirror check`: everything that would stop a cluster file's sites from starting on this
// machine, found without starting anything (issue 19 item 4). The file first (the loader's
// problems, with line and column), then a list of checkers over the sites that run here:
// devices (present, big enough, readable and writable), ports (free), keys (readable, valid,
// private) and TLS files (present, private keys, certificates that pass the site's own checks). Each finding names the key
// path, site or device and says the fix. More checkers are one entry in `checkers`.
import { groupClusterConfig, groupsOfSite } from './volumes.js';
import { X509Certificate } from 'node:crypto';
import { constants, accessSync, readFileSync, statSync, type Stats } from 'node:fs';
import { lookup } from 'node:dns/promises';
import { networkInterfaces, hostname } from 'node:os';
import { join } from 'node:path';
import { ConfigError, loadConfig, readSecret, type Address, type ClusterConfig, type SiteConfig, type SiteDevice } from './config.js';
import { certExpiryWarnDays, loadSiteTls, siteCertFiles } from './pki.js';
import { probeListen } from './run.js';
import { formatBytes } from './units.js';

/** problem: the site would not start (exit 1); warning: worth knowing, not fatal. */
export type Severity = 'problem' | 'warning';

export interface CheckFinding {
  severity: Severity;
  /** Key path (`sites.east.cache.device`), or the file for the file itself. */
  where: string;
  line?: number;
  column?: number;
  what: string;
  fix: string;
}

/** What the checkers look at: the loaded file, and which of its sites run on this machine. */
export interface CheckTarget {
  config: ClusterConfig;
  /** Sites whose addresses are this machine's (or the one named by --site). */
  here: SiteConfig[];
}

export interface Checker {
  name: string;
  check(target: CheckTarget): Promise<CheckFinding[]>;
}

export interface CheckReport {
  file: string;
  findings: CheckFinding[];
  /** Sites checked on this machine, and sites only checked for shape (they run elsewhere). */
  here: string[];
  elsewhere: string[];
}

const problem = (where: string, what: string, fix: string): CheckFinding => ({ severity: 'problem', where, what, fix });
const warning = (where: string, what: string, fix: string): CheckFinding => ({ severity: 'warning', where, what, fix });

/** A loader message `path: what; fix` split into its parts (the loader writes the fix after "; "). */
function fromConfigProblem(p: ConfigError['problems'][number]): CheckFinding {
  const text = p.message.startsWith(`${p.path}: `) ? p.message.slice(p.path.length + 2) : p.message;
  const cut = text.indexOf('; ');
  return {
    severity: 'problem',
    where: p.path,
    ...(p.line !== undefined ? { line: p.line } : {}),
    ...(p.column !== undefined ? { column: p.column } : {}),
    what: cut < 0 ? text : text.slice(0, cut),
    fix: p.path === '(yaml)' ? 'fix the YAML at that line and column (indentation, brackets, quotes)' : p.path === '(file)' ? 'check the path given to --config' : cut < 0 ? 'see README "Configuration" or docs/cluster.schema.json' : text.slice(cut + 2),
  };
}

function errCode(err: unknown): string {
  return (err as NodeJS.ErrnoException).code ?? String(err);
}

function statOf(path: string): Stats | string {
  try {
    return statSync(path);
  } catch (err) {
    return errCode(err);
  }
}

function canReadWrite(path: string): string | undefined {
  try {
    accessSync(path, constants.R_OK | constants.W_OK);
    return undefined;
  } catch (err) {
    return errCode(err);
  }
}

/** Devices of the sites here: present, the right kind, big enough, readable and writable. */
export const devicesChecker: Checker = {
  name: 'devices',
  async check({ config, here }) {
    const out: CheckFinding[] = [];
    const one = (where: string, dev: SiteDevice, bytesMin: number, sizeKey: string): void => {
      if (dev.kind !== 'loopback' && dev.kind !== 'serial' && dev.kind !== 'usb-sim') return; // memory: nothing to find; usb: the HAL enumerates the bus
      const st = statOf(dev.path);
      if (typeof st === 'string') {
        if (st === 'ENOENT' && dev.kind !== 'serial') {
          out.push(warning(where, `${dev.path} does not exist yet (geomirror site refuses to start without it)`, `geomirror start creates it, or: truncate -s ${bytesMin} ${dev.path}`));
        } else {
          out.push(problem(where, `${dev.path} ${st === 'ENOENT' ? 'does not exist' : `cannot be examined (${st})`}`, dev.kind === 'serial' ? 'plug the device in, or fix the path' : `fix the path or its permissions`));
        }
        return;
      }
      if (dev.kind === 'serial') {
        if (!st.isCharacterDevice()) out.push(problem(where, `${dev.path} is not a character device (a serial port)`, 'name the serial port, e.g. serial:/dev/ttyUSB0'));
      } else if (!st.isFile()) {
        out.push(problem(where, `${dev.path} is not a regular file (${st.isDirectory() ? 'a directory' : 'not a file'}); ${dev.kind} devices are plain files`, `name a file, e.g. ${join(dev.path, 'volume.img')}`));
        return;
      } else if (st.size < bytesMin) {
        out.push(problem(where, `${dev.path} holds ${formatBytes(st.size)} but ${sizeKey} is ${formatBytes(bytesMin)}`, `grow it: truncate -s ${bytesMin} ${dev.path}`));
      }
      const access = canReadWrite(dev.path);
      if (access !== undefined) out.push(problem(where, `${dev.path} is not readable and writable by this user (${access})`, `run as its owner, or: chmod u+rw ${dev.path}`));
    };
    for (const site of here) {
      if (config.multiVolume) {
        // Several volumes (issue 20): a cache file per consistency group, a device per volume.
        for (const g of groupsOfSite(config, site)) {
          const gs = groupClusterConfig(config, g).sites[site.name];
          if (gs?.cache) one(`sites.${site.name}.cache.device (group ${g.name})`, gs.cache.device, gs.cache.sizeBytes, `group ${g.name}'s share of cache.size`);
        }
        for (const v of config.volumes) {
          site.volumeStorage?.[v.name]?.forEach((d, i) => one(`sites.${site.name}.storage[${i}] (volume ${v.name})`, d, v.sizeBytes, `volume ${v.name}'s size`));
        }
        continue;
      }
      if (site.cache) one(`sites.${site.name}.cache.device`, site.cache.device, site.cache.sizeBytes, 'cache.size');
      site.storage.forEach((d, i) => one(`sites.${site.name}.storage[${i}]`, d, config.volume.sizeBytes, 'volume.size'));
    }
    return out;
  },
};

/** listen/nbd/admin of the sites here: bound for a moment, as the site will bind them. */
export const portsChecker: Checker = {
  name: 'ports',
  async check({ here }) {
    const out: CheckFinding[] = [];
    for (const site of here) {
      for (const key of ['listen', 'nbd', 'admin'] as const) {
        const a = site[key];
        if (a === undefined) continue;
        const err = await probeListen(a.host, a.port);
        if (err === undefined) continue;
        const where = `sites.${site.name}.${key}`;
        if (err.code === 'EADDRINUSE') out.push(problem(where, `${a.text} is taken by another process`, `stop it (is site ${site.name} already running? ss -ltnp 'sport = :${a.port}') or pick another port`));
        else if (err.code === 'EADDRNOTAVAIL') out.push(problem(where, `${a.text} is not an address of this machine`, 'run this site on the machine that owns the address, or fix the host'));
        else if (err.code === 'EACCES') out.push(problem(where, `${a.text} needs privileges (port below 1024)`, 'pick a port above 1023'));
        else out.push(problem(where, `${a.text} cannot be bound (${err.code ?? err.message})`, 'fix the host or port'));
      }
    }
    return out;
  },
};

/** Group or other may read the file: a key that leaks lets anyone join the cluster. */
function privateFinding(where: string, path: string, st: Stats, what: string): CheckFinding | undefined {
  if ((st.mode & 0o077) === 0) return undefined;
  return problem(where, `${what} ${path} is readable by group or others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')})`, `chmod 600 ${path}`);
}

/** The cluster key: readable, valid, private. */
export const keysChecker: Checker = {
  name: 'keys',
  async check({ config }) {
    const { secret } = config;
    if (secret.source !== 'file') return [warning('secret', 'the cluster key is written inline in the cluster file', 'keep the file private (chmod 600), or move the key to a file: secret: file:PATH')];
    const path = secret.path!;
    const st = statOf(path);
    if (typeof st === 'string') {
      return st === 'ENOENT'
        ? [warning('secret', `key file ${path} does not exist yet (sites refuse to start without it)`, `geomirror start creates it, or: geomirror keygen --out ${path} (then copy it to every site)`)]
        : [problem('secret', `key file ${path} cannot be examined (${st})`, 'fix its path or permissions')];
    }
    const out: CheckFinding[] = [];
    try {
      readSecret(config);
    } catch (err) {
      const msg = (err as Error).message.replace(/^secret: /, '');
      const cut = msg.indexOf('; ');
      out.push(problem('secret', cut < 0 ? msg : msg.slice(0, cut), cut < 0 ? `geomirror keygen --out ${path} --force (on every site)` : msg.slice(cut + 2)));
    }
    const leak = privateFinding('secret', path, st, 'key file');
    if (leak) out.push(leak);
    return out;
  },
};

/** PEM blocks of `kind` in `text`; a file that has none is not PEM. */
function pemBlocks(text: string, kind: RegExp): number {
  return [...text.matchAll(/-----BEGIN ([A-Z0-9 ]+)-----[\s\S]+?-----END \1-----/g)].filter((m) => kind.test(m[1]!)).length;
}

/** A start-up message `what; fix` (or `what. Fix: fix`) split into a finding. */
function splitFix(where: string, message: string, fallbackFix: string): CheckFinding {
  const m = /^(.*?)(?:\. Fix: |; )(.*)$/s.exec(message);
  return problem(where, m ? m[1]! : message, m ? m[2]! : fallbackFix);
}

/**
 * TLS files (issue 17), where the cluster file puts them (`tls:`, default beside the key): the
 * CA certificate parses; for each site here its certificate and key exist, the key is private,
 * and the pair passes the checks the site makes at start (loadSiteTls: this site and cluster,
 * not expired, from a CA in ca.crt, the key matches); CA keys on this machine are private; the
 * files of `nbd-tls:` are readable (keys and PSK files private). Missing files are warnings
 * (geomirror start and geomirror pki make them); `transport: insecure` is a warning.
 */
export const certificatesChecker: Checker = {
  name: 'certificates',
  async check({ config, here }) {
    const out: CheckFinding[] = [];
    const issueFix = (site: string, force = false): string => `geomirror pki issue --config ${config.file} --site ${site}${force ? ' --force' : ''} (where the CA key is), then copy site-${site}.crt and site-${site}.key to the site`;
    /** Present and readable: the stat; missing: undefined (the caller decides); otherwise a finding. */
    const present = (where: string, path: string, what: string): Stats | undefined | false => {
      const st = statOf(path);
      if (st === 'ENOENT') return undefined;
      if (typeof st === 'string') {
        out.push(problem(where, `${what} ${path} cannot be examined (${st})`, 'fix its path or permissions'));
        return false;
      }
      const access = (() => {
        try {
          accessSync(path, constants.R_OK);
          return undefined;
        } catch (err) {
          return errCode(err);
        }
      })();
      if (access !== undefined) {
        out.push(problem(where, `${what} ${path} is not readable by this user (${access})`, `make the user the site runs as its owner (chown), or run check as that user`));
        return false;
      }
      return st;
    };
    const privateKey = (where: string, path: string, what: string): void => {
      const st = present(where, path, what);
      if (!st) return;
      const leak = privateFinding(where, path, st, what);
      if (leak) out.push(leak);
    };

    for (const site of here) {
      const t = site.nbdTls;
      if (t.mode === 'off') continue;
      const key = `sites.${site.name}.nbd-tls`;
      if (t.psk !== undefined) {
        if (present(`${key}.psk`, t.psk, 'PSK file') === undefined) out.push(problem(`${key}.psk`, `PSK file ${t.psk} does not exist`, `write it (identity:hexkey lines): psktool -u NAME -p ${t.psk}`));
        privateKey(`${key}.psk`, t.psk, 'PSK file');
      }
      for (const [k, path] of [['cert', t.cert], ['ca', t.ca]] as const) {
        if (path !== undefined && present(`${key}.${k}`, path, 'certificate') === undefined) out.push(problem(`${key}.${k}`, `certificate ${path} does not exist`, 'fix the path'));
      }
      if (t.key !== undefined) {
        if (present(`${key}.key`, t.key, 'private key') === undefined) out.push(problem(`${key}.key`, `private key ${t.key} does not exist`, 'fix the path'));
        privateKey(`${key}.key`, t.key, 'private key');
      }
    }

    if (config.transport === 'insecure') {
      out.push(warning('transport', 'transport: insecure: links between sites are plain TCP and the admin port plain HTTP (lab mode)', 'remove the transport: key for mutual TLS (geomirror start or geomirror pki init makes the certificates)'));
      return out;
    }
    const { caCert, caKey } = config.tls;
    const caSt = present('tls.ca', caCert, 'CA certificate');
    let caOk = false;
    if (caSt === undefined) {
      out.push(warning('tls.ca', `CA certificate ${caCert} does not exist yet (sites refuse to start without it)`, `geomirror start creates it, or: geomirror pki init --config ${config.file} (then copy ca.crt to every site)`));
    } else if (caSt) {
      try {
        const text = readFileSync(caCert, 'utf8');
        if (pemBlocks(text, /CERTIFICATE$/) === 0) throw new Error('no PEM CERTIFICATE block');
        new X509Certificate(text);
        caOk = true;
      } catch (err) {
        out.push(problem('tls.ca', `${caCert} is not a PEM X.509 certificate (${(err as Error).message})`, `copy the cluster's ca.crt here, or make a CA: geomirror pki init --config ${config.file}`));
      }
    }
    // The CA keys sign every certificate: wherever they are on this machine, they are private.
    privateKey('tls.ca-key', caKey, 'CA key');
    privateKey('tls.ca-key', caKey.replace(/(\.key)?$/, '.old.key'), 'old CA key');

    for (const site of here) {
      const where = `sites.${site.name}`;
      const files = siteCertFiles(config, site.name);
      const cert = present(`${where} (certificate)`, files.cert, 'certificate');
      const key = present(`${where} (key)`, files.key, 'private key');
      if (cert === undefined && key === undefined) {
        out.push(warning(where, `site certificate ${files.cert} and key ${files.key} do not exist yet (the site refuses to start without them)`, `geomirror start creates them, or: ${issueFix(site.name)}`));
        continue;
      }
      if (cert === undefined || key === undefined) {
        const [has, missing] = cert === undefined ? [files.key, files.cert] : [files.cert, files.key];
        out.push(problem(where, `${has} is there but ${missing} is not (a certificate and its key are made as a pair)`, issueFix(site.name, true)));
      }
      if (key) {
        const leak = privateFinding(`${where} (key)`, files.key, key, 'private key');
        if (leak) out.push(leak);
      }
      if (!cert || !key || !caOk || out.some((f) => f.where === `${where} (key)`)) continue;
      try {
        const m = loadSiteTls(config, site.name);
        const daysLeft = Math.floor((m.notAfter.getTime() - Date.now()) / 86_400_000);
        if (daysLeft < certExpiryWarnDays) out.push(warning(`${where} (certificate)`, `${files.cert} expires in ${daysLeft} day(s) (${m.notAfter.toISOString()})`, `renew it: ${issueFix(site.name, true)}`));
      } catch (err) {
        out.push(splitFix(`${where} (certificate)`, (err as Error).message.replace(new RegExp(`^site ${site.name}: `), ''), issueFix(site.name, true)));
      }
    }
    return out;
  },
};

/** The checkers `geomirror check` runs, in order. Add one here to check more. */
export const checkers: Checker[] = [devicesChecker, portsChecker, keysChecker, certificatesChecker];

const wildcardHosts = new Set(['0.0.0.0', '::', 'localhost']);

/** Is `host` an address of this machine (so a site listening there runs here)? */
export async function isLocalHost(host: string): Promise<boolean> {
  if (wildcardHosts.has(host) || host === hostname()) return true;
  const mine = new Set(Object.values(networkInterfaces()).flatMap((list) => (list ?? []).map((i) => i.address)));
  if (mine.has(host) || /^127\./.test(host)) return true;
  try {
    const addrs = await lookup(host, { all: true });
    return addrs.some((a) => mine.has(a.address) || /^127\./.test(a.address));
  } catch {
    return false;
  }
}

async function runsHere(site: SiteConfig): Promise<boolean> {
  const addrs = [site.listen, site.nbd, site.admin].filter((a): a is Address => a !== undefined);
  for (const a of addrs) if (await isLocalHost(a.host)) return true;
  return false;
}

export interface CheckOptions {
  /** Check this site as running here, whatever its addresses say. */
  site?: string;
  /** Default `checkers`. */
  checkers?: readonly Checker[];
}

/** Loads and checks a cluster file; never starts anything. */
export async function checkClusterFile(file: string, options: CheckOptions = {}): Promise<CheckReport> {
  let config: ClusterConfig;
  try {
    config = loadConfig(file);
  } catch (err) {
    if (!(err instanceof ConfigError)) throw err;
    return { file: err.file, findings: err.problems.map(fromConfigProblem), here: [], elsewhere: [] };
  }
  const findings: CheckFinding[] = config.warnings.map((w) => {
    const cut = w.indexOf(': ');
    return warning(cut < 0 ? '(cluster)' : w.slice(0, cut), cut < 0 ? w : w.slice(cut + 2), 'see README "Configuration"');
  });
  if (options.site !== undefined && config.sites[options.site] === undefined) {
    findings.push(problem('--site', `no site named ${options.site} in ${config.file}`, `use one of ${config.siteNames.join(', ')}`));
    return { file: config.file, findings, here: [], elsewhere: config.siteNames };
  }
  const here: SiteConfig[] = [];
  const elsewhere: string[] = [];
  for (const name of config.siteNames) {
    const site = config.sites[name]!;
    if (options.site !== undefined ? name === options.site : await runsHere(site)) here.push(site);
    else elsewhere.push(name);
  }
  for (const c of options.checkers ?? checkers) findings.push(...(await c.check({ config, here })));
  return { file: config.file, findings, here: here.map((s) => s.name), elsewhere };
}
