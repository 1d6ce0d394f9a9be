// The JSON Schema of the cluster file, for editors (VS Code's YAML extension, JetBrains, vim's
// coc-yaml): generated from the loader's own key table (config-keys.ts) and value patterns, so
// the schema and the loader cannot drift. docs/cluster.schema.json is this function's output;
// test/site/config-schema.test.ts regenerates it and fails when the committed file differs
// (write it again with: node --import tsx scripts/gen-schema.ts).
//
// The schema checks shape (keys, types, enums, which role may carry which key); the loader
// checks the rest (references between sites, port clashes, sizes against block sizes).
import { addressTextPattern, deviceSchemesAccepted } from './config.js';
import { clusterKeys, nameLengthMax, namePattern, roles, secretBytesMin, siteKeys, type KeySpec, type KeyTable } from './config-keys.js';
import { durationTextPattern, sizeSyntaxText, sizeTextPattern } from './units.js';

type Schema = Record<string, unknown>;

const nameSchema = (what: string): Schema => ({ type: 'string', pattern: namePattern.source, maxLength: nameLengthMax, description: what });
const addressSchema: Schema = { type: 'string', pattern: addressTextPattern.source };

function valueSchema(spec: KeySpec): Schema {
  switch (spec.type) {
    case 'name':
      return nameSchema(spec.doc);
    case 'secret':
      return { type: 'string', pattern: `^(file:\\s*\\S.*|\\s*([0-9a-fA-F]{2}){${secretBytesMin},}\\s*)$` };
    case 'size':
      return { oneOf: [{ type: 'integer', minimum: 0 }, { type: 'string', pattern: sizeTextPattern.source }] };
    case 'duration':
      return { oneOf: [{ type: 'integer', minimum: 0 }, { type: 'string', pattern: durationTextPattern.source }] };
    case 'address':
      return addressSchema;
    case 'device':
      return { type: 'string', pattern: `^(${deviceSchemesAccepted.join('|')}):` };
    case 'devices': {
      const list = { type: 'array', minItems: 1, items: { type: 'string', pattern: `^(${deviceSchemesAccepted.join('|')}):` } };
      return { oneOf: [list, { type: 'object', minProperties: 1, propertyNames: { pattern: namePattern.source }, additionalProperties: list }] };
    }
    case 'degrees':
      return { type: 'number', minimum: -(spec.limit ?? 0), maximum: spec.limit ?? 0 };
    case 'siteRef':
      return { type: 'string', minLength: 1 };
    case 'siteList':
      return { type: 'array', uniqueItems: true, items: { type: 'string', minLength: 1 } };
    case 'nameList':
      return { type: 'array', items: { type: 'string', minLength: 1 } };
    case 'urlList':
      return { type: 'array', minItems: 1, items: { type: 'string', pattern: '^\\s*https?://' } };
    case 'keyPrefix':
      return { type: 'string', pattern: '^/[A-Za-z0-9_./-]*$' };
    case 'path':
      return { type: 'string', pattern: '\\S' };
    case 'enum':
      return { enum: [...(spec.values ?? [])] };
    case 'map':
      return mapSchema(spec.keys ?? {});
    case 'mapList':
      return { type: 'array', minItems: 1, items: mapSchema(spec.keys ?? {}) };
    case 'enumOrMap':
      return { oneOf: [{ enum: [...(spec.values ?? [])] }, mapSchema(spec.keys ?? {})] };
    case 'addressMap':
      return { type: 'object', propertyNames: { pattern: namePattern.source }, additionalProperties: addressSchema };
    case 'siteMap':
      return { type: 'object', minProperties: 1, propertyNames: { pattern: namePattern.source, maxLength: nameLengthMax }, additionalProperties: siteSchema() };
  }
}

function keySchema(spec: KeySpec): Schema {
  const s: Schema = { ...valueSchema(spec), description: spec.type === 'size' ? `${spec.doc} Sizes: ${sizeSyntaxText}.` : spec.doc };
  if (spec.default !== undefined) s.default = spec.default;
  return s;
}

function mapSchema(keys: KeyTable): Schema {
  const required = Object.entries(keys).filter(([, k]) => k.required === true).map(([name]) => name);
  return {
    type: 'object',
    additionalProperties: false,
    ...(required.length > 0 ? { required } : {}),
    properties: Object.fromEntries(Object.entries(keys).map(([name, spec]) => [name, keySchema(spec)])),
  };
}

/** A site: every key's shape, then per role which keys it must have and which it may not. */
function siteSchema(): Schema {
  const entries = Object.entries(siteKeys as KeyTable);
  return {
    type: 'object',
    additionalProperties: false,
    required: ['role'],
    properties: Object.fromEntries(entries.map(([name, spec]) => [name, keySchema(spec)])),
    allOf: roles.map((role) => {
      const required = entries.filter(([, k]) => k.roles?.required.includes(role)).map(([name]) => name);
      const refused = entries.filter(([, k]) => !k.roles?.allowed.includes(role)).map(([name]) => name);
      return {
        if: { properties: { role: { const: role } }, required: ['role'] },
        then: { required, ...(refused.length > 0 ? { properties: Object.fromEntries(refused.map((k) => [k, false])) } : {}) },
      };
    }),
  };
}

/** The whole schema (draft-07: what editors' YAML language servers read). */
export function clusterSchema(): Schema {
  return {
    $schema: 'http://json-schema.org/draft-07/schema#',
    title: 'geomirror cluster file',
    description: 'One YAML file describes a cluster (README "Configuration"). Generated from src/site/config-keys.ts; do not edit by hand.',
    ...mapSchema(clusterKeys),
    // One volume (volume:) or several (volumes:), never both.
    oneOf: [{ required: ['volume'], not: { required: ['volumes'] } }, { required: ['volumes'], not: { required: ['volume'] } }],
  };
}

/** The schema as the committed file holds it. */
export function clusterSchemaText(): string {
  return `${JSON.stringify(clusterSchema(), null, 2)}\n`;
}
