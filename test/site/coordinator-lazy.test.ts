// The etcd client stays off the write path (issue 20 item 3): a site process loads `etcd3`
// (and grpc, cockatiel) only when its coordinator session starts, which happens only with a
// `coordinator:` key. Checked with the module trace of the CLI's --help test: importing the
// site runtime resolves none of them; starting a coordinator does.
import { execFile } from 'node:child_process';
import { mkdtempSync, realpathSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { promisify } from 'node:util';
import { describe, expect, it } from 'vitest';
import { moduleTracer } from '../cli/module-trace.js';

const run = promisify(execFile);
const root = realpathSync(fileURLToPath(new URL('../../', import.meta.url)));
const etcdModules = (urls: string[]) => [...new Set(urls.filter((u) => /\/node_modules\/(etcd3|cockatiel|@grpc)\//.test(u)).map((u) => u.replace(/^.*\/node_modules\/((@[^/]+\/)?[^/]+)\/.*$/, '$1')))];

describe('etcd3 is loaded lazily (issue 20 item 3)', () => {
  it('the site runtime (run.js, replica.js, the coordinator module) loads no etcd client; a started coordinator does', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'geomirror-etcd-lazy-'));
    try {
      const trace = moduleTracer(dir);
      const url = (p: string) => pathToFileURL(join(root, p)).href;
      const t1 = trace(process.env);
      await run(process.execPath, ['--input-type=module', '-e', `await import(${JSON.stringify(url('dist/src/site/run.js'))}); await import(${JSON.stringify(url('dist/src/site/coordinator.js'))});`], { cwd: root, env: t1.env });
      expect(t1.resolved()).toContain(url('dist/src/site/replica.js'));
      expect(etcdModules(t1.resolved())).toEqual([]);

      // Started (against nothing listening: it only has to load the client), then stopped.
      const t2 = trace(process.env);
      const script = `
        const { EtcdCoordinator } = await import(${JSON.stringify(url('dist/src/site/coordinator.js'))});
        const log = { info() {}, warn() {}, error() {}, debug() {} };
        const c = new EtcdCoordinator({ config: { endpoints: ['http://127.0.0.1:9'], prefix: '/t', leaseTtlMs: 2000 }, endpoints: ['http://127.0.0.1:9'], cluster: 'c', group: 'g', site: 's', mode: 'candidate', log,
          hooks: { epoch: () => 1n, mayCampaign: () => false, authority() {}, granted() {}, newerEpoch() {}, askStandby: () => false } });
        await c.start();
        await c.stop();`;
      await run(process.execPath, ['--input-type=module', '-e', script], { cwd: root, env: t2.env });
      expect(etcdModules(t2.resolved())).toEqual(expect.arrayContaining(['etcd3', 'cockatiel']));
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
