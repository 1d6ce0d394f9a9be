// Regenerates the generated tables of docs/PROTOCOL.md and test/conformance/vectors.json from
// the layout definitions: `node --import tsx test/conformance/gen.ts`. The tests check that the
// committed files equal what this produces, so run it after changing a layout and review the diff.
import { readFileSync, writeFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { regenerate } from '../../src/wire/doc.js';
import { buildVectors } from './vectors.js';

const docPath = fileURLToPath(new URL('../../docs/PROTOCOL.md', import.meta.url));
const vectorsPath = fileURLToPath(new URL('./vectors.json', import.meta.url));
writeFileSync(docPath, regenerate(readFileSync(docPath, 'utf8')));
writeFileSync(vectorsPath, `${JSON.stringify(buildVectors(), null, 1)}\n`);
console.log(`wrote ${docPath} and ${vectorsPath}`);
