// geomirror check: a table of broken cluster files and machines, each named by its key path,
// line and column (YAML), device, port or key, with the fix; exit 0 on the shipped examples.
import { execFile } from 'node:child_process';
import { generateKeyPairSync } from 'node:crypto';
import { chmodSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { formatCheckTable } from '../../src/cli/check.js';
import { checkClusterFile } from '../../src/site/check.js';
import { loadConfig } from '../../src/site/config.js';
import { prepareLoopbackCluster } from '../../src/site/prepare.js';
import { createCa, preparePki } from '../../src/site/pki.js';
import { freePort } from '../net/helpers.js';

const run = promisify(execFile);
const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const targets = fileURLToPath(new URL('../../targets', import.meta.url));
const root = mkdtempSync(join(tmpdir(), 'geomirror-check-'));
afterAll(() => rmSync(root, { recursive: true, force: true }));

let ports: number[] = [];
const good = (): string => `cluster: demo
secret: file:./data/cluster.key
volume: { name: vol0, size: 8M, blockSize: 4096 }
sites:
  local:
    role: primary
    nbd: 127.0.0.1:${ports[0]}
    admin: 127.0.0.1:${ports[1]}
    cache: { device: "loopback:./data/local.cache", size: 1M }
    storage: ["loopback:./data/local.img"]
    mirrors: [east]
  east:
    role: mirror
    listen: 127.0.0.1:${ports[2]}
    admin: 127.0.0.1:${ports[3]}
    cache: { device: "loopback:./data/east.cache", size: 1M }
    storage: ["loopback:./data/east.img"]
`;

let n = 0;
/** A fresh folder with the file (and, when it loads, its loopback files, key, CA and site certificates made as geomirror start makes them). */
async function setUp(text: string): Promise<string> {
  const dir = join(root, `c${n++}`);
  mkdirSync(dir);
  const file = join(dir, 'cluster.yaml');
  writeFileSync(file, text);
  let config;
  try {
    config = loadConfig(file);
  } catch {
    return file; // a file the loader refuses: nothing to prepare
  }
  prepareLoopbackCluster(config);
  await preparePki(config);
  return file;
}

beforeAll(async () => {
  ports = await Promise.all([freePort(), freePort(), freePort(), freePort()]);
});

interface Case {
  name: string;
  text?: (t: string) => string;
  /** Changes to the machine after the files were prepared. */
  machine?: (dir: string) => void | Promise<void>;
  site?: string;
  /** Lines the table must contain (each a regex over one row). */
  want: RegExp[];
}

let busy: Server | undefined;
afterAll(() => busy?.close());

const cases: Case[] = [
  { name: 'YAML syntax error, with line and column', text: (t) => t.replace('mirrors: [east]', 'mirrors: [east'), want: [/^problem +cluster\.yaml:1[0-9]:\d+ \(yaml\) +not valid YAML/m] },
  { name: 'duplicate key, with line and column', text: (t) => t.replace('    role: mirror\n', '    role: mirror\n    role: relay\n'), want: [/^problem +cluster\.yaml:14:5 \(yaml\) +not valid YAML: Map keys must be unique/m] },
  { name: 'misspelled key', text: (t) => t.replace('mirrors: [east]', 'mirrros: [east]'), want: [/^problem +cluster\.yaml:11:5 sites\.local\.mirrros +unknown key \(did you mean "mirrors"\?\) +known keys here: role, listen/m] },
  { name: 'not a size', text: (t) => t.replace('size: 8M', 'size: 8 mega'), want: [/^problem +cluster\.yaml:3:\d+ volume\.size +"8 mega" is not a size +use e\.g\. 64MiB/m] },
  { name: 'unknown mirror', text: (t) => t.replace('mirrors: [east]', 'mirrors: [esat]'), want: [/sites\.local\.mirrors\[0\] +no site named "esat" \(did you mean "east"\?\)/] },
  { name: 'malformed address', text: (t) => t.replace(`listen: 127.0.0.1:${0}`, '').replace(/listen: 127\.0\.0\.1:\d+/, 'listen: 127.0.0.1:99999'), want: [/sites\.east\.listen +"127\.0\.0\.1:99999" is not HOST:PORT/] },
  { name: 'port used twice in the file', text: (t) => t.replace(`admin: 127.0.0.1:${ports[3]}`, `admin: 127.0.0.1:${ports[2]}`), want: [/sites\.east\.admin +127\.0\.0\.1:\d+ is already used by sites\.east\.listen/] },
  { name: 'role missing a key', text: (t) => t.replace(/    nbd: 127\.0\.0\.1:\d+\n/, ''), want: [/sites\.local\.nbd +is missing +a primary site needs it/] },
  {
    name: 'storage file smaller than the volume',
    machine: (dir) => truncateSync(join(dir, 'data', 'east.img'), 4096),
    want: [/^problem +sites\.east\.storage\[0\] +\S+east\.img holds 4 KiB but volume\.size is 8 MiB +grow it: truncate -s 8388608 \S+east\.img$/m],
  },
  {
    name: 'cache device is a directory',
    machine: (dir) => {
      rmSync(join(dir, 'data', 'local.cache'));
      mkdirSync(join(dir, 'data', 'local.cache'));
    },
    want: [/^problem +sites\.local\.cache\.device +\S+local\.cache is not a regular file \(a directory\)/m],
  },
  {
    name: 'port taken by another process',
    machine: async () => {
      busy = createServer();
      await new Promise<void>((r) => busy!.listen(ports[1], '127.0.0.1', () => r()));
    },
    want: [/^problem +sites\.local\.admin +127\.0\.0\.1:\d+ is taken by another process +stop it \(is site local already running\?/m],
  },
  {
    name: 'an address of another machine, checked with --site',
    text: (t) => t.replace(/listen: 127\.0\.0\.1:(\d+)/, 'listen: 192.0.2.7:$1'),
    site: 'east',
    want: [/^problem +sites\.east\.listen +192\.0\.2\.7:\d+ is not an address of this machine/m],
  },
  { name: 'key file readable by others', machine: (dir) => chmodSync(join(dir, 'data', 'cluster.key'), 0o644), want: [/^problem +secret +key file \S+cluster\.key is readable by group or others \(mode 0644\) +chmod 600 \S+cluster\.key$/m] },
  {
    name: 'key file too short',
    machine: (dir) => writeFileSync(join(dir, 'data', 'cluster.key'), 'abcd\n', { mode: 0o600 }),
    want: [/^problem +secret +key file \S+cluster\.key must hold at least 16 bytes as hex +make a new one with: geomirror keygen/m],
  },
  { name: 'ca.crt that is not PEM', machine: (dir) => writeFileSync(join(dir, 'data', 'ca.crt'), 'not a certificate\n'), want: [/^problem +tls\.ca +\S+ca\.crt is not a PEM X\.509 certificate \(no PEM CERTIFICATE block\) +copy the cluster's ca\.crt here/m] },
  {
    name: 'site key without its certificate, readable by others',
    machine: (dir) => {
      rmSync(join(dir, 'data', 'site-east.crt'));
      const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      rmSync(join(dir, 'data', 'site-east.key'));
      writeFileSync(join(dir, 'data', 'site-east.key'), privateKey.export({ type: 'pkcs8', format: 'pem' }), { mode: 0o644 });
      chmodSync(join(dir, 'data', 'site-east.key'), 0o644);
    },
    want: [/^problem +sites\.east \(key\) +private key \S+site-east\.key is readable by group or others \(mode 0644\) +chmod 600 \S+site-east\.key$/m, /^problem +sites\.east +\S+site-east\.key is there but \S+site-east\.crt is not .* +geomirror pki issue --config \S+ --site east --force/m],
  },
  { name: 'CA key readable by others', machine: (dir) => chmodSync(join(dir, 'data', 'ca.key'), 0o640), want: [/^problem +tls\.ca-key +CA key \S+ca\.key is readable by group or others \(mode 0640\) +chmod 600 \S+ca\.key$/m] },
  {
    name: 'site certificate from another CA',
    machine: async (dir) => {
      // A new CA replaces ca.crt: the site certificates made before are from the old one.
      const config = loadConfig(join(dir, 'cluster.yaml'));
      await createCa(config, { force: true });
    },
    want: [/^problem +sites\.local \(certificate\) +\S+site-local\.crt is not signed by a CA in \S+ca\.crt +copy the cluster's current ca\.crt here, or re-issue/m],
  },
  {
    name: 'site certificate of another site',
    machine: (dir) => writeFileSync(join(dir, 'data', 'site-east.crt'), readFileSync(join(dir, 'data', 'site-local.crt'))),
    want: [/^problem +sites\.east \(certificate\) +\S+site-east\.crt is not a certificate of site 'east' of cluster 'demo'/m],
  },
  { name: 'no such cluster file', machine: (dir) => rmSync(join(dir, 'cluster.yaml')), want: [/^problem +\(file\) +cannot read the cluster file: no such file +check the path given to --config$/m] },
];

describe('geomirror check names each bad thing', () => {
  it(`has at least 12 broken cases (${cases.length})`, () => expect(cases.length).toBeGreaterThanOrEqual(12));

  it('finds nothing wrong in a good file on a prepared machine', async () => {
    const file = await setUp(good());
    const report = await checkClusterFile(file);
    expect(report.findings).toEqual([]);
    expect(report.here).toEqual(['local', 'east']);
  });

  it('warns (no problem) where geomirror start would make the TLS files, and about transport: insecure', async () => {
    const file = await setUp(good());
    for (const f of ['ca.crt', 'ca.key', 'site-local.crt', 'site-local.key', 'site-east.crt', 'site-east.key']) rmSync(join(file, '..', 'data', f));
    const table = formatCheckTable(await checkClusterFile(file), join(file, '..'));
    expect(table).toMatch(/^warning +tls\.ca +CA certificate \S+ca\.crt does not exist yet .* +geomirror start creates it, or: geomirror pki init --config/m);
    expect(table).toMatch(/^warning +sites\.east +site certificate \S+site-east\.crt and key \S+site-east\.key do not exist yet/m);
    expect(table).toMatch(/^cluster\.yaml: no problems, 3 warning\(s\)/m);
    const insecure = await setUp(`transport: insecure\n${good()}`);
    const t2 = formatCheckTable(await checkClusterFile(insecure), join(insecure, '..'));
    expect(t2).toMatch(/^warning +transport +transport: insecure: links between sites are plain TCP/m);
    expect(t2).toMatch(/^cluster\.yaml: no problems, 1 warning\(s\)/m);
  });

  for (const c of cases) {
    it(c.name, async () => {
      const file = await setUp(c.text ? c.text(good()) : good());
      await c.machine?.(join(file, '..'));
      const report = await checkClusterFile(file, c.site !== undefined ? { site: c.site } : {});
      const table = formatCheckTable(report, join(file, '..'));
      for (const want of c.want) expect(table).toMatch(want);
      expect(report.findings.some((f) => f.severity === 'problem')).toBe(true);
      expect(table).toMatch(/^cluster\.yaml: \d+ problem\(s\)/m);
      if (c.machine !== undefined && c.name.startsWith('port')) {
        busy?.close();
        busy = undefined;
      }
    });
  }
});

describe('geomirror check from the command line', () => {
  it('exits 0 on every shipped example and 1 on a broken file, naming the key', async () => {
    const examples = ['loopback', 'rpi'].flatMap((d) => readdirSync(join(targets, d)).filter((f) => /\.ya?ml$/.test(f)).map((f) => join(targets, d, f)));
    expect(examples.length).toBeGreaterThanOrEqual(4);
    for (const f of examples) {
      const { stdout } = await run(process.execPath, [bin, 'check', '--config', f]);
      expect(stdout, f).toMatch(/: no problems/);
    }
    const broken = await setUp(good().replace('mirrors: [east]', 'mirrors: [east'));
    const err = await run(process.execPath, [bin, 'check', '--config', broken]).then(() => undefined, (e: { code: number; stdout: string }) => e);
    expect(err?.code).toBe(1);
    expect(err?.stdout).toMatch(/cluster\.yaml:\d+:\d+ \(yaml\) +not valid YAML/);
  });
});
