// vitest global setup: tests run the TypeScript sources in-process, but every site and CLI
// child process runs the compiled JavaScript in dist/ (bin/geomirror.mjs). Build it first when
// it is older than the sources (a few ms when current), so children always run current code;
// a failed build stops the run here instead of as a child that refuses to start.
import { execFileSync } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export default function setup(): void {
  execFileSync(process.execPath, ['scripts/build.mjs'], { cwd: fileURLToPath(new URL('..', import.meta.url)), stdio: 'inherit' });
}
