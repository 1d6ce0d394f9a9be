// Cluster-file validation: the DESIGN.md example loads as written, and every refusal names
// the key path (and the line) it is about.
import { describe, expect, it } from 'vitest';
import { configProblems } from './config-problems.js';
import { ConfigError, parseConfig, parseAddress } from '../../src/site/config.js';
import { parseSizeBytes, parseDurationMs } from '../../src/site/units.js';

const file = '/srv/demo/cluster.yaml';
const designExample = `
cluster: demo
secret: file:./data/cluster.key
volume: { name: vol0, size: 1GiB, blockSize: 4096 }
sites:
  local:
    role: primary
    listen: 127.0.0.1:7400
    nbd: 127.0.0.1:10809
    admin: 127.0.0.1:9400
    cache: { device: "loopback:./data/local.cache", size: 64MiB }
    storage: ["loopback:./data/local.img"]
    mirrors: [east, west]
  east:  { role: mirror, listen: 127.0.0.1:7401, cache: { device: "loopback:./data/east.cache", size: 64MiB }, storage: ["loopback:./data/east.img"] }
  west:  { role: mirror, listen: 127.0.0.1:7402, cache: { device: "loopback:./data/west.cache", size: 64MiB }, storage: ["loopback:./data/west.img"] }
`;

function problems(text: string): string[] {
  return configProblems(text, file);
}

/** The DESIGN example with one line replaced. */
function edit(from: string, to: string): string {
  expect(designExample).toContain(from);
  return designExample.replace(from, to);
}

describe('loading a valid file', () => {
  it('normalizes the DESIGN.md example', () => {
    const c = parseConfig(designExample, file);
    expect(c.cluster).toBe('demo');
    expect(c.secret).toEqual({ source: 'file', path: '/srv/demo/data/cluster.key' });
    expect(c.volume).toEqual({ name: 'vol0', sizeBytes: 1024 ** 3, blockSize: 4096, blockCount: 262144 });
    expect(c.siteNames).toEqual(['local', 'east', 'west']);
    expect(c.primary).toBe('local');
    const local = c.sites.local!;
    expect(local.role).toBe('primary');
    expect(local.nbd).toEqual({ host: '127.0.0.1', port: 10809, text: '127.0.0.1:10809' });
    expect(local.cache).toEqual({ device: { kind: 'loopback', path: '/srv/demo/data/local.cache', text: 'loopback:/srv/demo/data/local.cache' }, sizeBytes: 64 * 1024 ** 2 });
    expect(local.storage.map((d) => d.text)).toEqual(['loopback:/srv/demo/data/local.img']);
    expect(local.mirrors).toEqual(['east', 'west']);
    expect(local.onMirrorLoss).toBe('degrade');
    expect(c.sites.east!.listen!.port).toBe(7401);
    expect(c.warnings).toEqual([]);
  });

  it('accepts cascades, standbys, witnesses, device kinds, locations and real addresses', () => {
    const c = parseConfig(
      `
cluster: wide
secret: 00112233445566778899aabbccddeeff
volume: { name: v, size: 512MiB, blockSize: 512 }
sites:
  hq:
    role: primary
    listen: 10.0.0.1:7400
    nbd: 0.0.0.0:10809
    cache: { device: "memory:", size: 16MiB }
    storage: ["usb:0781:5583:AA01", "serial:/dev/ttyUSB0?baud=921600"]
    mirrors: [r1, far, backup]
    on-mirror-loss: block
    location: { lat: 51.5, lon: -0.13 }
  r1: { role: relay, listen: "relay1.lan:7401", forward: r2, relay-ack: end-to-end, cache: { device: "memory:r1", size: 1MiB } }
  r2: { role: relay, listen: "[fd00::2]:7401", forward: edge, cache: { device: "loopback:/abs/r2.cache", size: 1MiB }, storage: ["loopback:r2.img"] }
  edge: { role: mirror, listen: 10.0.0.4:7401, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
  far: { role: mirror, listen: 10.0.0.5:7401, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
  backup: { role: standby, standby-for: hq, listen: 10.0.0.6:7401, nbd: 10.0.0.6:10809, failover-timeout: 2.5s, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
  judge: { role: witness, listen: 10.0.0.7:7401 }
`,
      file,
    );
    expect(c.secret).toEqual({ source: 'inline', inlineHex: '00112233445566778899aabbccddeeff' });
    expect(c.sites.hq!.storage[0]).toMatchObject({ kind: 'usb', vendorId: 0x0781, productId: 0x5583, serial: 'AA01', text: 'usb:0781:5583:AA01' });
    expect(c.sites.hq!.storage[1]).toMatchObject({ kind: 'serial', path: '/dev/ttyUSB0', baudRate: 921600 });
    expect(c.sites.hq!.onMirrorLoss).toBe('block');
    expect(c.sites.r1!.relayAck).toBe('end-to-end');
    expect(c.sites.r2!.relayAck).toBe('cached');
    expect(c.sites.r2!.listen!.host).toBe('fd00::2');
    expect(c.sites.r2!.storage[0]!.text).toBe('loopback:/srv/demo/r2.img');
    expect(c.sites.r2!.cache!.device).toMatchObject({ kind: 'loopback', path: '/abs/r2.cache' });
    expect(c.sites.backup!.failoverTimeoutMs).toBe(2500);
    expect(c.sites.backup!.mirrors).toEqual(['r1', 'far']); // inherits the primary's mirrors
    expect(c.sites.judge!.role).toBe('witness');
    expect(c.sites.hq!.location).toEqual({ lat: 51.5, lon: -0.13 });
  });

  it('warns about a mirror nothing sends to; adds a standby to its primary\'s mirrors', () => {
    const c = parseConfig(edit('mirrors: [east, west]', 'mirrors: [east]'), file);
    expect(c.warnings.join('\n')).toMatch(/sites\.west: the mirror receives no writes/);
    const standby = parseConfig(designExample.replace('role: mirror, listen: 127.0.0.1:7402', 'role: standby, standby-for: local, listen: 127.0.0.1:7402').replace('mirrors: [east, west]', 'mirrors: [east]'), file);
    expect(standby.warnings).toEqual([]);
    expect(standby.sites.local!.mirrors).toEqual(['east', 'west']); // the standby needs the writes (claim 9)
    expect(standby.sites.local!.standby).toBe('west');
    expect(standby.sites.west!.mirrors).toEqual(['east']);
    // Listed already: not added twice; no standby: no standby set on the primary.
    const listed = parseConfig(designExample.replace('role: mirror, listen: 127.0.0.1:7402', 'role: standby, standby-for: local, listen: 127.0.0.1:7402'), file);
    expect(listed.sites.local!.mirrors).toEqual(['east', 'west']);
    expect(listed.sites.local!.standby).toBe('west');
    expect(parseConfig(designExample, file).sites.local!.standby).toBeUndefined();
  });

  it('lists the witnesses on every site', () => {
    const c = parseConfig(
      designExample
        .replace('role: mirror, listen: 127.0.0.1:7402', 'role: standby, standby-for: local, listen: 127.0.0.1:7402')
        .concat('  judge: { role: witness, listen: 127.0.0.1:7409 }\n'),
      file,
    );
    expect(c.warnings).toEqual([]);
    for (const n of c.siteNames) expect(c.sites[n]!.witnesses, n).toEqual(['judge']);
    expect(parseConfig(designExample, file).sites.local!.witnesses).toEqual([]);
  });

  it('parses connect: into addresses per peer (dial there instead of the peer\'s listen)', () => {
    const c = parseConfig(edit('    mirrors: [east, west]\n', '    mirrors: [east, west]\n    connect: { east: "10.9.0.7:17401", west: "[fd00::9]:7402" }\n'), file);
    expect(c.sites.local!.connect).toEqual({
      east: { host: '10.9.0.7', port: 17401, text: '10.9.0.7:17401' },
      west: { host: 'fd00::9', port: 7402, text: '[fd00::9]:7402' },
    });
    expect(c.sites.east!.connect).toEqual({});
    // A connect address is where this site dials, not where anything listens: it cannot clash.
    expect(parseConfig(edit('    mirrors: [east, west]\n', '    mirrors: [east, west]\n    connect: { east: "127.0.0.1:7402" }\n'), file).sites.local!.connect.east!.port).toBe(7402);
  });
});

describe('connect: and standby refusals name the key', () => {
  const withConnect = (map: string): string => edit('    mirrors: [east, west]\n', `    mirrors: [east, west]\n    connect: ${map}\n`);

  it('refuses an unknown peer, suggesting the closest name', () => {
    try {
      parseConfig(withConnect('{ esat: "10.9.0.7:7401" }'), file);
      expect.unreachable();
    } catch (err) {
      const e = err as ConfigError;
      expect(e.problems.map((p) => p.path)).toEqual(['sites.local.connect.esat']);
      expect(e.problems[0]!.message).toMatch(/^sites\.local\.connect\.esat: no site named "esat".*east.*; sites are local, east, west/);
      expect(e.problems[0]!.line).toBe(14);
    }
  });

  it('fans out to at most 31 mirrors (the core keeps one bit per mirror), and says so naming the list', () => {
    const mirrors = (n: number): string => {
      const names = Array.from({ length: n }, (_, i) => `m${i}`);
      const sites = names.map((m, i) => `  ${m}: { role: mirror, listen: 127.0.0.1:${7500 + i}, cache: { device: "loopback:./data/${m}.cache", size: 64MiB }, storage: ["loopback:./data/${m}.img"] }`);
      return `${designExample.replace('mirrors: [east, west]', `mirrors: [east, west, ${names.join(', ')}]`)}${sites.join('\n')}\n`;
    };
    expect(parseConfig(mirrors(29), file).sites.local!.mirrors).toHaveLength(31);
    expect(problems(mirrors(30))).toContainEqual(expect.stringMatching(/^sites\.local\.mirrors: lists 32 sites; a site fans out to at most 31 \(use relays for more\)/));
  });

  it('refuses connecting to itself, a bad address and a non-mapping', () => {
    expect(problems(withConnect('{ local: "10.9.0.7:7400" }'))).toContainEqual(expect.stringMatching(/^sites\.local\.connect\.local: local does not connect to itself/));
    expect(problems(withConnect('{ east: "10.9.0.7" }'))).toContainEqual(expect.stringMatching(/^sites\.local\.connect\.east: "10\.9\.0\.7" is not HOST:PORT/));
    expect(problems(withConnect('[east]'))).toContainEqual(expect.stringMatching(/^sites\.local\.connect: must be a mapping of peer site -> HOST:PORT/));
  });

  it('refuses a second standby, naming both', () => {
    const two = designExample
      .replace('role: mirror, listen: 127.0.0.1:7401', 'role: standby, standby-for: local, listen: 127.0.0.1:7401')
      .replace('role: mirror, listen: 127.0.0.1:7402', 'role: standby, standby-for: local, listen: 127.0.0.1:7402');
    try {
      parseConfig(two, file);
      expect.unreachable();
    } catch (err) {
      const e = err as ConfigError;
      expect(e.problems.map((p) => p.path)).toEqual(['sites.west.role']);
      expect(e.problems[0]!.message).toMatch(/^sites\.west\.role: east and west both stand by for local; one standby per primary/);
    }
  });

  it('resync-rate: a size per second on a primary or standby; refused on a mirror, and 0 refused', () => {
    const c = parseConfig(designExample.replace('role: primary', 'role: primary\n    resync-rate: 8MiB'), file);
    expect(c.sites.local!.resyncBytesPerSec).toBe(8 * 1024 * 1024);
    expect(problems(designExample.replace('role: primary', 'role: primary\n    resync-rate: 0'))).toContainEqual(expect.stringMatching(/^sites\.local\.resync-rate: must be more than 0/));
    expect(problems(designExample.replace('role: mirror, listen: 127.0.0.1:7401', 'role: mirror, resync-rate: 1MiB, listen: 127.0.0.1:7401'))).toContainEqual(expect.stringMatching(/^sites\.east\.resync-rate: a mirror site has no resync-rate/));
  });

  it('refuses a second witness and a failover-timeout on a witness', () => {
    const withWitnesses = designExample.concat(
      '  w1: { role: witness, listen: 127.0.0.1:7408 }\n  w2: { role: witness, listen: 127.0.0.1:7409 }\n',
    );
    expect(problems(withWitnesses)).toContainEqual(expect.stringMatching(/^sites\.w2\.role: w1 and w2 are both witnesses; one witness per cluster/));
    const timed = designExample.concat('  w1: { role: witness, listen: 127.0.0.1:7408, failover-timeout: 1s }\n');
    expect(problems(timed)).toContainEqual(expect.stringMatching(/^sites\.w1\.failover-timeout: a witness site has no failover-timeout \(only standby sites do\)/));
  });
});

describe('refusals name the key', () => {
  const cases: [string, string, RegExp][] = [
    ['not a size', '', /^sites\.local\.cache\.size: "64 mega" is not a size; use e\.g\. 64MiB: .*binary: 1G = 1GB = 1GiB/],
    ['unknown top key', 'cluster: demo', /^clustr: unknown key \(did you mean "cluster"\?\)/],
    ['snake_case key', '    mirrors: [east, west]', /^sites\.local\.on_mirror_loss: unknown key \(did you mean "on-mirror-loss"\?\)/],
    ['unknown mirror site', 'mirrors: [east, west]', /^sites\.local\.mirrors\[1\]: no site named "wset" \(did you mean "west"\?\)/],
    ['bad role', 'role: mirror, listen: 127.0.0.1:7402', /^sites\.west\.role: "mirorr" is not a role \(did you mean "mirror"\?\)/],
    ['port clash', 'listen: 127.0.0.1:7402', /^sites\.west\.listen: 127\.0\.0\.1:7401 is already used by sites\.east\.listen/],
    ['admin clashes with nbd', 'admin: 127.0.0.1:9400', /^sites\.local\.admin: 127\.0\.0\.1:10809 is already used by sites\.local\.nbd/],
    ['bad address', 'listen: 127.0.0.1:7400', /^sites\.local\.listen: "127\.0\.0\.1:99999" is not HOST:PORT/],
    ['bad device prefix', '"loopback:./data/east.img"', /^sites\.east\.storage\[0\]: device string "lopback:\.\/data\/east\.img": unknown scheme .* \(did you mean "loopback:"\?\)$/],
    ['bad usb ids', '"loopback:./data/west.img"', /^sites\.west\.storage\[0\]: device string "usb:78:5583:x y": expected a serial number/],
    ['block size', 'blockSize: 4096', /^volume\.blockSize: 1024 is not supported; use 512 or 4096/],
    ['volume not a block multiple', 'size: 1GiB', /^volume\.size: "1000" must be a positive multiple of blockSize 4096/],
    ['key on the wrong role', 'role: mirror, listen: 127.0.0.1:7401', /^sites\.east\.forward: a mirror site has no forward/],
    ['missing cache', ', cache: { device: "loopback:./data/west.cache", size: 64MiB }', /^sites\.west\.cache: is missing; a mirror site needs it/],
    ['bad policy', '    mirrors: [east, west]', /^sites\.local\.on-mirror-loss: "stop" is not a policy; use block or degrade/],
    ['bad location', '    mirrors: [east, west]', /^sites\.local\.location\.lat: 95 is not decimal degrees between -90 and 90/],
    ['short inline key', 'secret: file:./data/cluster.key', /^secret: an inline key must be at least 16 bytes of hex/],
  ];
  const edits: Record<string, [string, string]> = {
    'not a size': ['size: 64MiB }\n    storage', 'size: 64 mega }\n    storage'],
    'unknown top key': ['cluster: demo', 'cluster: demo\nclustr: x'],
    'snake_case key': ['    mirrors: [east, west]', '    mirrors: [east, west]\n    on_mirror_loss: block'],
    'unknown mirror site': ['mirrors: [east, west]', 'mirrors: [east, wset]'],
    'bad role': ['role: mirror, listen: 127.0.0.1:7402', 'role: mirorr, listen: 127.0.0.1:7402'],
    'port clash': ['listen: 127.0.0.1:7402', 'listen: 127.0.0.1:7401'],
    'admin clashes with nbd': ['admin: 127.0.0.1:9400', 'admin: 127.0.0.1:10809'],
    'bad address': ['listen: 127.0.0.1:7400', 'listen: 127.0.0.1:99999'],
    'bad device prefix': ['"loopback:./data/east.img"', '"lopback:./data/east.img"'],
    'bad usb ids': ['"loopback:./data/west.img"', '"usb:78:5583:x y"'],
    'block size': ['blockSize: 4096', 'blockSize: 1024'],
    'volume not a block multiple': ['size: 1GiB', 'size: "1000"'],
    'key on the wrong role': ['role: mirror, listen: 127.0.0.1:7401', 'role: mirror, forward: west, listen: 127.0.0.1:7401'],
    'missing cache': [', cache: { device: "loopback:./data/west.cache", size: 64MiB }', ''],
    'bad policy': ['    mirrors: [east, west]', '    mirrors: [east, west]\n    on-mirror-loss: stop'],
    'bad location': ['    mirrors: [east, west]', '    mirrors: [east, west]\n    location: { lat: 95, lon: 0 }'],
    'short inline key': ['secret: file:./data/cluster.key', 'secret: abcd'],
  };
  for (const [name, _anchor, expected] of cases) {
    it(name, () => {
      const [from, to] = edits[name]!;
      const found = problems(edit(from, to));
      expect(found.some((m) => expected.test(m)), `${expected} in:\n${found.join('\n')}`).toBe(true);
    });
  }

  it('treats a wildcard host as clashing with its own site, not with other machines', () => {
    expect(problems(edit('nbd: 127.0.0.1:10809', 'nbd: 0.0.0.0:7400'))).toContainEqual(
      expect.stringMatching(/^sites\.local\.nbd: 0\.0\.0\.0:7400 is already used by sites\.local\.listen/),
    );
    expect(parseConfig(edit('listen: 127.0.0.1:7401', 'listen: 0.0.0.0:7400'), file).sites.east!.listen!.text).toBe('0.0.0.0:7400');
  });

  it('reports every problem in one pass, each with its line', () => {
    try {
      parseConfig(edit('mirrors: [east, west]', 'mirrors: [east, wset]').replace('size: 1GiB', 'size: 1 gig'), file);
      expect.unreachable();
    } catch (err) {
      const e = err as ConfigError;
      expect(e.problems.map((p) => p.path)).toEqual(['volume.size', 'sites.local.mirrors[1]']);
      expect(e.problems.map((p) => p.line)).toEqual([4, 13]);
      expect(e.problems.map((p) => p.column)).toEqual([23, 21]);
      expect(e.message).toContain(`${file}:4:23: volume.size: "1 gig" is not a size; use e.g. 64MiB`);
    }
  });

  it('needs exactly one primary', () => {
    expect(problems(designExample.replace('role: mirror, listen: 127.0.0.1:7401', 'role: primary, nbd: 127.0.0.1:10810, mirrors: [west], listen: 127.0.0.1:7401'))).toContainEqual(
      expect.stringMatching(/^sites: has 2 primaries \(local, east\)/),
    );
    expect(problems(designExample.replace('role: primary', 'role: standby\n    standby-for: east').replace('    nbd: 127.0.0.1:10809\n', ''))).toContainEqual(
      expect.stringMatching(/^sites: has no primary/),
    );
  });

  it('refuses forward loops and names the chain', () => {
    const text = `
cluster: loop
secret: 00112233445566778899aabbccddeeff
volume: { name: v, size: 1MiB }
sites:
  p: { role: primary, nbd: 127.0.0.1:10809, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"], mirrors: [a] }
  a: { role: relay, listen: 127.0.0.1:7401, forward: b, cache: { device: "memory:", size: 1MiB } }
  b: { role: relay, listen: 127.0.0.1:7402, forward: c, cache: { device: "memory:", size: 1MiB } }
  c: { role: relay, listen: 127.0.0.1:7403, forward: a, cache: { device: "memory:", size: 1MiB } }
  s: { role: relay, listen: 127.0.0.1:7404, forward: s, cache: { device: "memory:", size: 1MiB } }
`;
    const found = problems(text);
    expect(found).toContainEqual(expect.stringMatching(/^sites\.a\.forward: forward chain loops \(a -> b -> c -> a\)/));
    expect(found).toContainEqual(expect.stringMatching(/^sites\.s\.forward: s cannot forward to itself/));
  });

  it('names a missing or unreadable file and bad YAML', () => {
    expect(problems('cluster: [unclosed\n')[0]).toMatch(/^not valid YAML: /);
    expect(problems('cluster: a\ncluster: b\n')[0]).toMatch(/not valid YAML: Map keys must be unique/);
    expect(problems('- just\n- a list\n')[0]).toMatch(/must be a YAML mapping/);
  });
});

describe('units and addresses', () => {
  it('parses sizes: every unit is binary (1G = 1GB = 1GiB), as qemu-img, DRBD and LVM read 1G', () => {
    expect(parseSizeBytes('64MiB')).toBe(64 * 1024 * 1024);
    expect(parseSizeBytes('1.5KiB')).toBe(1536);
    expect(parseSizeBytes('2TiB')).toBe(2 * 1024 ** 4);
    expect(parseSizeBytes(4096)).toBe(4096);
    expect(parseSizeBytes('4096B')).toBe(4096);
    for (const text of ['1G', '1GB', '1GiB', '1g', '1gb', '1 GiB', ' 1G ']) expect(parseSizeBytes(text), text).toBe(1024 ** 3);
    for (const text of ['64M', '64MB', '64MiB', '64m']) expect(parseSizeBytes(text), text).toBe(64 * 1024 ** 2);
    expect(parseSizeBytes('4K')).toBe(4096);
    expect(parseSizeBytes('1T')).toBe(1024 ** 4);
    expect(parseSizeBytes('0.3B')).toBeUndefined();
    expect(parseSizeBytes('1.5')).toBeUndefined(); // not whole bytes
    expect(parseSizeBytes('1X')).toBeUndefined();
    expect(parseSizeBytes('1iB')).toBeUndefined();
    expect(parseSizeBytes('1GiBB')).toBeUndefined();
    expect(parseSizeBytes(-1)).toBeUndefined();
    expect(parseSizeBytes(1.5)).toBeUndefined();
  });
  it('parses durations', () => {
    expect(parseDurationMs('5s')).toBe(5000);
    expect(parseDurationMs('250ms')).toBe(250);
    expect(parseDurationMs('1m')).toBe(60000);
    expect(parseDurationMs('soon')).toBeUndefined();
  });
  it('parses addresses', () => {
    expect(parseAddress('node-east.lan:7400')).toEqual({ host: 'node-east.lan', port: 7400, text: 'node-east.lan:7400' });
    expect(parseAddress('[::1]:80')).toEqual({ host: '::1', port: 80, text: '[::1]:80' });
    expect(parseAddress('256.1.1.1:80')).toBeUndefined();
    expect(parseAddress('host:0')).toBeUndefined();
    expect(parseAddress('7400')).toBeUndefined();
  });
});
