// Writes docs/cluster.schema.json from the loader's key table (src/site/config-schema.ts).
// Run after changing src/site/config-keys.ts: node --import tsx scripts/gen-schema.ts
import { writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { clusterSchemaText } from '../src/site/config-schema.js';

const out = fileURLToPath(new URL('../docs/cluster.schema.json', import.meta.url));
writeFileSync(out, clusterSchemaText());
process.stdout.write(`wrote ${out}\n`);
