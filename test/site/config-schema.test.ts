// The JSON Schema for editors is generated from the loader's key table: the committed file must
// be exactly what the generator makes now, the shipped cluster files must pass it, and files the
// loader refuses for their shape must fail it too.
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Ajv } from 'ajv';
import { parse } from 'yaml';
import { describe, expect, it } from 'vitest';
import { clusterSchema, clusterSchemaText } from '../../src/site/config-schema.js';
import { siteKeys } from '../../src/site/config-keys.js';

const root = fileURLToPath(new URL('../..', import.meta.url));
const schemaFile = join(root, 'docs', 'cluster.schema.json');

function shippedExamples(): string[] {
  const out: string[] = [];
  for (const dir of ['targets/loopback', 'targets/rpi']) {
    for (const f of readdirSync(join(root, dir))) if (/\.ya?ml$/.test(f)) out.push(join(root, dir, f));
  }
  return out;
}

const validate = new Ajv({ allErrors: true, strict: true, strictRequired: false }).compile(clusterSchema());
const errorsOf = (doc: unknown): string[] => (validate(doc) ? [] : (validate.errors ?? []).map((e) => `${e.instancePath} ${e.message}`));

describe('docs/cluster.schema.json', () => {
  it('is what the generator makes from the loader\'s key table (regenerate: node --import tsx scripts/gen-schema.ts)', () => {
    expect(readFileSync(schemaFile, 'utf8')).toBe(clusterSchemaText());
  });

  it('documents every site key', () => {
    const props = (clusterSchema().properties as { sites: { additionalProperties: { properties: Record<string, { description?: string }> } } }).sites.additionalProperties.properties;
    expect(Object.keys(props).sort()).toEqual(Object.keys(siteKeys).sort());
    for (const [k, v] of Object.entries(props)) expect(v.description, k).toMatch(/\w/);
  });

  it('accepts every shipped cluster file', () => {
    const files = shippedExamples();
    expect(files.length).toBeGreaterThanOrEqual(4);
    for (const f of files) expect(errorsOf(parse(readFileSync(f, 'utf8'))), f).toEqual([]);
  });

  it('refuses what the loader refuses for its shape', () => {
    const good = parse(readFileSync(join(root, 'targets/loopback/cluster.yaml'), 'utf8')) as { sites: Record<string, Record<string, unknown>>; volume: Record<string, unknown> };
    const variants: [string, (c: typeof good) => void, RegExp][] = [
      ['unknown site key', (c) => { c.sites.local!.mirrros = ['east']; }, /must NOT have additional properties/],
      ['bad size', (c) => { c.volume.size = '1 gig'; }, /\/volume\/size/],
      ['bad role', (c) => { c.sites.east!.role = 'mirorr'; }, /\/sites\/east\/role must be equal to one of the allowed values/],
      ['key on the wrong role', (c) => { c.sites.east!.forward = 'west'; }, /\/sites\/east\/forward/],
      ['missing required key for the role', (c) => { delete c.sites.east!.listen; }, /\/sites\/east must have required property 'listen'/],
      ['bad address', (c) => { c.sites.east!.listen = 'localhost'; }, /\/sites\/east\/listen must match pattern/],
      ['bad device scheme', (c) => { c.sites.east!.storage = ['lopback:./x.img']; }, /\/sites\/east\/storage\/0 must match pattern/],
      ['block size', (c) => { c.volume.blockSize = 1024; }, /\/volume\/blockSize must be equal to one of the allowed values/],
      ['transport', (c) => { (c as Record<string, unknown>).transport = 'tcp'; }, /\/transport must be equal to one of the allowed values/],
      ['tls key', (c) => { (c as Record<string, unknown>).tls = { ca: './ca.crt', cakey: './ca.key' }; }, /\/tls must NOT have additional properties/],
      ['nbd-tls mode', (c) => { c.sites.local!['nbd-tls'] = 'yes'; }, /\/sites\/local\/nbd-tls must match exactly one schema in oneOf/],
      ['nbd-tls mapping key', (c) => { c.sites.local!['nbd-tls'] = { mode: 'require', pks: './nbd.psk' }; }, /\/sites\/local\/nbd-tls/],
      ['nbd-tls on a witness', (c) => { c.sites.witness = { role: 'witness', listen: '127.0.0.1:7999', 'nbd-tls': 'require' }; }, /\/sites\/witness\/nbd-tls/],
    ];
    for (const [label, change, want] of variants) {
      const c = structuredClone(good);
      change(c);
      expect(errorsOf(c).join('\n'), label).toMatch(want);
    }
    // The TLS keys (issue 17) in the shapes the loader takes.
    const tlsShapes: ((c: typeof good) => void)[] = [
      (c) => { (c as Record<string, unknown>).transport = 'insecure'; },
      (c) => { (c as Record<string, unknown>).tls = { dir: './pki', ca: './pki/ca.crt', 'ca-key': './pki/ca.key' }; },
      (c) => { c.sites.local!['nbd-tls'] = 'require'; },
      (c) => { c.sites.local!['nbd-tls'] = false; },
      (c) => { c.sites.east!['nbd-tls'] = { mode: 'allow', psk: './data/nbd.psk', allow: ['backup-host'] }; },
      (c) => { c.sites.local!['nbd-tls'] = { cert: './a.crt', key: './a.key', ca: './clients.crt' }; },
    ];
    for (const change of tlsShapes) {
      const c = structuredClone(good);
      change(c);
      expect(errorsOf(c), JSON.stringify(c.sites.local)).toEqual([]);
    }
    // Sizes in every spelling the loader takes.
    for (const size of ['1G', '1GB', '1GiB', '1g', 1073741824]) {
      const c = structuredClone(good);
      c.volume.size = size;
      expect(errorsOf(c), String(size)).toEqual([]);
    }
  });
});
