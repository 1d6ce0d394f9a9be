// NBD TLS (issue 17 item 7) with the real clients on 127.0.0.1: nbdinfo, nbdcopy (libnbd nbds://
// URIs with tls-certificates= / tls-psk-file=) and qemu-img (tls-creds-x509 / tls-creds-psk)
// against an export with nbd-tls: require, x509 certificates from the cluster CA (geomirror pki)
// and a PSK file; the bytes that reach the backing device are the bytes sent (hashes compared).
// `require` answers a plain client with NBD_REP_ERR_TLS_REQD; the allow-list refuses a client
// whose certificate or PSK identity it does not name.
import { execFile } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { MemoryDevice } from '../../hal/memory.js';
import { blockDeviceExport } from '../../src/nbd/blockdev-export.js';
import { Opt, Rep } from '../../src/nbd/protocol.js';
import { NbdServer } from '../../src/nbd/server.js';
import { parseConfig, type ClusterConfig } from '../../src/site/config.js';
import { SiteTlsIdentity } from '../../src/site/link-security.js';
import { buildNbdTls } from '../../src/site/nbd-tls.js';
import { createCa, issueClientCert, preparePki } from '../../src/site/pki.js';
import { RawClient } from './raw-client.js';

const run = promisify(execFile);
const sizeBytes = 16 * 1024 * 1024;
const dir = mkdtempSync(join(tmpdir(), 'geomirror-nbd-tls-'));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const quiet = { info: () => {}, warn: () => {} };
/** The server's info lines: which TLS connections read into a reused buffer (issue 18 item 3). */
const established: Record<string, unknown>[] = [];
const capture = {
  debug: () => {},
  info: (fields: object, msg: string) => void (msg === 'NBD TLS established' && established.push(fields as Record<string, unknown>)),
  warn: () => {},
};

let dev: MemoryDevice;
let server: NbdServer;
let allowServer: NbdServer;
let port = 0;
let allowPort = 0;
let config: ClusterConfig;
const clientDir = join(dir, 'client-backup');
const strangerDir = join(dir, 'client-stranger');
const foreignDir = join(dir, 'foreign', 'client-x');
const pskFile = join(dir, 'nbd.psk');
const pskDir = join(dir, 'qemu-psk');
const pskKey = randomBytes(32).toString('hex');

function clusterText(allow = ''): string {
  return `cluster: demo
secret: ${'ab'.repeat(32)}
volume: { name: vol0, size: 16MiB }
sites:
  local: { role: primary, nbd: 127.0.0.1:10809, nbd-tls: { mode: require, psk: ./nbd.psk${allow} }, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"], mirrors: [east] }
  east: { role: mirror, listen: 127.0.0.1:7401, cache: { device: "memory:", size: 64KiB }, storage: ["memory:"] }
`;
}

beforeAll(async () => {
  writeFileSync(pskFile, `# identity:hexkey, as psktool writes\nalice:${pskKey}\n`, { mode: 0o600 });
  const { mkdirSync } = await import('node:fs');
  mkdirSync(pskDir, { mode: 0o700 });
  writeFileSync(join(pskDir, 'keys.psk'), `alice:${pskKey}\n`, { mode: 0o600 });
  config = parseConfig(clusterText(), join(dir, 'cluster.yaml'));
  await preparePki(config);
  await issueClientCert(config, 'backup-host', clientDir);
  await issueClientCert(config, 'stranger', strangerDir);
  const foreign = parseConfig(clusterText(), join(dir, 'foreign', 'cluster.yaml'));
  await createCa(foreign);
  await issueClientCert(foreign, 'backup-host', foreignDir);
  const identity = new SiteTlsIdentity(config, 'local', quiet);
  dev = new MemoryDevice({ blockSizeBytes: 4096, blockCount: sizeBytes / 4096 });
  server = new NbdServer({ exports: [blockDeviceExport(dev, { name: 'vol0', description: 'tls test' })], tls: buildNbdTls(config, config.sites.local!, identity)!, logger: capture });
  port = await server.listen('127.0.0.1', 0);
  const allowConfig = parseConfig(clusterText(', allow: [backup-host]'), join(dir, 'cluster.yaml'));
  allowServer = new NbdServer({ exports: [blockDeviceExport(dev, { name: 'vol0', description: 'tls test' })], tls: buildNbdTls(allowConfig, allowConfig.sites.local!, identity)! });
  allowPort = await allowServer.listen('127.0.0.1', 0);
});

afterAll(async () => {
  await server?.close();
  await allowServer?.close();
  rmSync(dir, { recursive: true, force: true });
});

const x509Uri = (p = port) => `nbds://127.0.0.1:${p}/vol0?tls-certificates=${clientDir}`;
const pskUri = (p = port) => `nbds://alice@127.0.0.1:${p}/vol0?tls-psk-file=${pskFile}`;

describe('NBD TLS with the real clients (nbd-tls: require)', () => {
  it('nbdinfo over x509 (client certificate from geomirror pki client) and over PSK', async () => {
    for (const uri of [x509Uri(), pskUri()]) {
      const { stdout } = await run('nbdinfo', ['--json', uri]);
      expect(JSON.parse(stdout).exports[0]['export-size']).toBe(sizeBytes);
    }
  });

  it('nbdcopy writes over x509 and reads back over PSK: the device holds exactly the bytes', async () => {
    const data = randomBytes(4 * 1024 * 1024);
    const src = join(dir, 'src.img');
    writeFileSync(src, Buffer.concat([data, Buffer.alloc(sizeBytes - data.length)]));
    established.length = 0;
    await run('nbdcopy', [src, x509Uri()]);
    expect(sha(await dev.read(0, data.length / 4096))).toBe(sha(data));
    // nbdcopy's 4 MiB arrived as cleartext in each connection's one reused read buffer (the
    // parser copied what it kept, or the hash above would differ), not in fresh buffers.
    expect(established.length).toBeGreaterThan(0);
    for (const f of established) expect(f).toMatchObject({ reusedReadBuffer: true });
    const back = join(dir, 'back.img');
    await run('nbdcopy', [pskUri(), back]);
    const { readFileSync } = await import('node:fs');
    expect(sha(readFileSync(back).subarray(0, data.length))).toBe(sha(data));
  });

  it('qemu-img with tls-creds-x509 and with tls-creds-psk', async () => {
    const data = randomBytes(1024 * 1024);
    const src = join(dir, 'q.img');
    writeFileSync(src, data);
    const target = (creds: string) => `driver=nbd,host=127.0.0.1,port=${port},export=vol0,tls-creds=${creds}`;
    await run('qemu-img', ['convert', '-n', '-f', 'raw', '--object', `tls-creds-x509,id=tls0,endpoint=client,dir=${clientDir}`, '--target-image-opts', src, target('tls0')]);
    expect(sha(await dev.read(0, data.length / 4096))).toBe(sha(data));
    const { stdout } = await run('qemu-img', ['info', '--output=json', '--object', `tls-creds-psk,id=tls1,endpoint=client,dir=${pskDir},username=alice`, '--image-opts', target('tls1')]);
    expect(JSON.parse(stdout)['virtual-size']).toBe(sizeBytes);
  });

  it('require refuses a plain client with NBD_REP_ERR_TLS_REQD (raw and nbdinfo)', async () => {
    const c = await RawClient.connect(port);
    await c.handshake();
    c.sendOption(Opt.LIST);
    const reply = await c.readOptionReply();
    expect(reply.type >>> 0).toBe(Rep.ERR_TLS_REQD >>> 0);
    c.close();
    // nbdinfo prints "Operation not supported"; its debug log shows the server's TLS_REQD reason.
    const plain = await run('nbdinfo', [`nbd://127.0.0.1:${port}/vol0`], { env: { ...process.env, LIBNBD_DEBUG: '1' } }).then(() => undefined, (e: { stderr: string }) => e);
    expect(plain?.stderr).toMatch(/this export requires TLS/);
  });

  it('refuses a certificate from a foreign CA, a wrong PSK, and (with allow:) a client it does not name', async () => {
    const foreign = await run('nbdinfo', [x509Uri().replace(clientDir, foreignDir)]).then(() => undefined, (e: { stderr: string }) => e);
    expect(foreign).toBeDefined();
    const wrong = join(dir, 'wrong.psk');
    writeFileSync(wrong, `alice:${randomBytes(32).toString('hex')}\n`, { mode: 0o600 });
    expect(await run('nbdinfo', [pskUri().replace(pskFile, wrong)]).then(() => 'ok', () => 'refused')).toBe('refused');
    // allow: [backup-host]: that certificate gets in; 'stranger' (same CA) and PSK alice do not.
    const { stdout } = await run('nbdinfo', ['--size', x509Uri(allowPort)]);
    expect(Number(stdout.trim())).toBe(sizeBytes);
    expect(await run('nbdinfo', [x509Uri(allowPort).replace(clientDir, strangerDir)]).then(() => 'ok', () => 'refused')).toBe('refused');
    expect(await run('nbdinfo', [pskUri(allowPort)]).then(() => 'ok', () => 'refused')).toBe('refused');
  });
});
