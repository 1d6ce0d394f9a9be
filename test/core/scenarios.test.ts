// Runs every scenario under test/core/testdata (see test/core/scenarios.ts for the format) and
// compares each command's actions with the expected ones checked in beside it.
import { readdirSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { headerOf, loadScenario, renderScenario, runScenario } from './scenarios.js';

const dir = join(dirname(fileURLToPath(import.meta.url)), 'testdata');
const rewrite = process.env.UPDATE_SCENARIOS === '1';

describe('core scenarios (test/core/testdata)', () => {
  const files = readdirSync(dir).filter((f) => f.endsWith('.txt')).sort();
  it('has the scenarios the architecture promises', () => {
    expect(files).toEqual(expect.arrayContaining(['mirror-join-resync.txt', 'primary-ack-rule.txt', 'relay-forward.txt']));
  });
  for (const f of files) {
    it(f, () => {
      const { text, cases } = loadScenario(join(dir, f));
      const results = runScenario(cases);
      if (rewrite) {
        writeFileSync(join(dir, f), renderScenario(headerOf(text), results));
        return;
      }
      results.forEach((r, i) => expect(r.output, `${f}:${cases[i]!.line}: ${r.command}`).toEqual(cases[i]!.expected));
    });
  }
});
