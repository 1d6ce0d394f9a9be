// The docs are self-contained: every relative link and every `path/like/this.ts` that README.md
// and docs/*.md cite exists in the repository (issue 19 item 8: docs cited "issue notes",
// "claims 5-7" without a mapping and a design file outside the repository).
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

const root = fileURLToPath(new URL('..', import.meta.url));
const docs = ['README.md', ...readdirSync(join(root, 'docs')).filter((f) => f.endsWith('.md')).map((f) => `docs/${f}`)];
/** Top-level folders of the repository: a code span starting with one names a repository path. */
const repoDirs = ['hal', 'src', 'test', 'docs', 'targets', 'bench', 'scripts', 'bin', '.ci'];

/** Relative link targets and repository paths a Markdown file cites, with its line numbers. */
function citedPaths(text: string): { path: string; line: number; kind: 'link' | 'code' }[] {
  const out: { path: string; line: number; kind: 'link' | 'code' }[] = [];
  text.split('\n').forEach((lineText, i) => {
    for (const m of lineText.matchAll(/\[[^\]]*\]\(([^)\s]+)(?:\s+"[^"]*")?\)/g)) {
      const target = m[1]!;
      if (/^[a-z][a-z0-9+.-]*:/i.test(target) || target.startsWith('#')) continue; // URLs, anchors
      out.push({ path: target.replace(/#.*$/, ''), line: i + 1, kind: 'link' });
    }
    for (const m of lineText.matchAll(/`([^`\s]+)`/g)) {
      const span = m[1]!.replace(/[.,;:]$/, '');
      if (/[*<>{}$]|\bX\b|\.\.\.|^\//.test(span) || /(^|\/)data\//.test(span)) continue; // globs, placeholders, absolute, generated data
      const top = span.split('/')[0]!;
      const isRepoPath = span.includes('/') && repoDirs.includes(top);
      const isSiblingFile = !span.includes('/') && /^[A-Za-z0-9_.-]+\.(md|ts|mjs|json|ya?ml)$/.test(span) && !span.startsWith('.');
      if (isRepoPath || isSiblingFile || span.startsWith('../')) out.push({ path: span, line: i + 1, kind: 'code' });
    }
  });
  return out;
}

describe('README.md and docs/*.md cite only what is in the repository', () => {
  it('finds the citations it should', () => {
    expect(citedPaths('see [the protocol](PROTOCOL.md#frames) and `src/core/primary.ts`, `hal/`; not [x](https://e.x) or `data/cluster.log` or `geomirror-*.tgz`').map((c) => c.path)).toEqual([
      'PROTOCOL.md',
      'src/core/primary.ts',
      'hal/',
    ]);
  });

  for (const doc of docs) {
    it(doc, () => {
      const abs = join(root, doc);
      const text = readFileSync(abs, 'utf8');
      const missing = citedPaths(text).filter(({ path, kind }) => {
        // Links resolve against the file's folder; code spans against it or the repository root.
        const candidates = kind === 'link' ? [join(dirname(abs), path)] : [join(dirname(abs), path), join(root, path)];
        return !candidates.some((c) => existsSync(c) && relative(root, c).split('/')[0] !== '..');
      });
      expect(missing.map((m) => `${doc}:${m.line}: ${m.path}`)).toEqual([]);
      // Words that point outside the repository.
      const outside = text.split('\n').flatMap((l, i) => (/issue notes|\.\.\/shared\/|claims\.txt/i.test(l) ? [`${doc}:${i + 1}: ${l.trim()}`] : []));
      expect(outside).toEqual([]);
    });
  }

  it('maps every claim the docs cite to docs/CLAIMS.md', () => {
    const claims = readFileSync(join(root, 'docs/CLAIMS.md'), 'utf8');
    for (let n = 1; n <= 21; n++) expect(claims, `claim ${n}`).toMatch(new RegExp(`^\\| ${n} \\|`, 'm'));
  });
});
