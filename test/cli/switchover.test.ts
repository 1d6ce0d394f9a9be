// geomirror promote / demote (planned switchover, issue 10 item 5) against in-process admin
// servers on 127.0.0.1 with fake role changes: the request is signed with the cluster key from
// the file, a refusal exits 1 printing the site's reason, a success prints what the site did.
import { adminTokenKey } from '../../src/site/admin-auth.js';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, it, vi } from 'vitest';
import { buildProgram } from '../../src/cli/program.js';
import { requestRoleChange } from '../../src/cli/switchover.js';
import { startAdminServer, type AdminServer } from '../../src/site/admin.js';
import { loadConfig } from '../../src/site/config.js';
import { createSiteMetrics } from '../../src/site/metrics.js';
import { RoleChangeError, type RoleChangeAnswer } from '../../src/site/role-change.js';
import type { SiteStatus } from '../../src/site/status.js';

const run = promisify(execFile);
const bin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'geomirror-switchover-'));
const secretHex = '00112233445566778899aabbccddeeff';
const secret = Buffer.from(secretHex, 'hex');

const calls: { site: string; action: string; reason: string }[] = [];
const servers: AdminServer[] = [];
let cfg = '';

async function site(name: string, role: SiteStatus['role'], key: Buffer, fns: { promote?: (r: string) => Promise<RoleChangeAnswer>; demote?: (r: string) => Promise<RoleChangeAnswer> }): Promise<AdminServer> {
  const m = createSiteMetrics({ site: name, role, cluster: 'demo', processMetrics: false });
  const status = (): SiteStatus => ({ cluster: 'demo', site: name, role, volume: 'vol0', epoch: 1, lastSeqAcked: '0', state: 'in-sync', cache: { usedBytes: 0, capacityBytes: 1, entries: 0 }, peers: [], pid: 1, uptimeSeconds: 1 });
  const s = await startAdminServer({ host: '127.0.0.1', port: 0, status, registry: m.registry, roleChange: fns, auth: { site: name, cluster: 'demo', tokenKey: adminTokenKey(key) } });
  servers.push(s);
  return s;
}

const record = (name: string, action: string, answer: () => RoleChangeAnswer) => async (reason: string): Promise<RoleChangeAnswer> => {
  calls.push({ site: name, action, reason });
  return answer();
};

beforeAll(async () => {
  // local: the primary, busy draining; backup: the standby, ready; east: answers with another key.
  const local = await site('local', 'primary', secret, {
    demote: async (reason) => {
      calls.push({ site: 'local', action: 'demote', reason });
      throw new RoleChangeError('local cannot demote now: a demotion is already draining');
    },
  });
  const backup = await site('backup', 'standby', secret, { promote: record('backup', 'promote', () => ({ site: 'backup', epoch: 2, phase: 'promoting' })) });
  const east = await site('east', 'mirror', Buffer.from('ffeeddccbbaa99887766554433221100', 'hex'), { promote: record('east', 'promote', () => ({ site: 'east', epoch: 2, phase: 'promoting' })) });
  const gone = await site('gone', 'mirror', secret, {});
  const deadPort = gone.port;
  await gone.close();
  servers.pop();
  cfg = join(dir, 'cluster.yaml');
  writeFileSync(
    cfg,
    // Plain HTTP admin servers here (HTTPS and client certificates: test/site/admin.test.ts).
    `cluster: demo
secret: ${secretHex}
transport: insecure
volume: { name: vol0, size: 1MiB }
sites:
  local: { role: primary, listen: 127.0.0.1:7400, nbd: 127.0.0.1:10809, admin: 127.0.0.1:${local.port}, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"], mirrors: [east, west] }
  backup: { role: standby, standby-for: local, listen: 127.0.0.1:7404, admin: 127.0.0.1:${backup.port}, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
  east: { role: mirror, listen: 127.0.0.1:7401, admin: 127.0.0.1:${east.port}, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
  west: { role: mirror, listen: 127.0.0.1:7402, admin: 127.0.0.1:${deadPort}, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
  north: { role: mirror, listen: 127.0.0.1:7403, cache: { device: "memory:", size: 1MiB }, storage: ["memory:"] }
`,
  );
});
afterAll(async () => {
  await Promise.all(servers.map((s) => s.close()));
  rmSync(dir, { recursive: true, force: true });
});

/** Runs the command in-process; returns what it printed and its exit code. */
async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const out = vi.spyOn(process.stdout, 'write').mockImplementation((c) => ((stdout += String(c)), true));
  const err = vi.spyOn(process.stderr, 'write').mockImplementation((c) => ((stderr += String(c)), true));
  const before = process.exitCode;
  process.exitCode = undefined;
  try {
    await buildProgram().exitOverride().parseAsync(['node', 'geomirror', ...args]);
    return { code: Number(process.exitCode ?? 0), stdout, stderr };
  } finally {
    process.exitCode = before;
    out.mockRestore();
    err.mockRestore();
  }
}

describe('geomirror promote / demote', () => {
  it('requestRoleChange signs with the file\'s key and returns what the site answered', async () => {
    const config = loadConfig(cfg);
    calls.length = 0;
    const ok = await requestRoleChange(config, 'promote', 'backup', 'maintenance at local');
    expect(ok.code).toBe(200);
    expect(JSON.parse(ok.body)).toEqual({ site: 'backup', epoch: 2, phase: 'promoting' });
    expect(calls).toEqual([{ site: 'backup', action: 'promote', reason: 'maintenance at local' }]);
    const refused = await requestRoleChange(config, 'demote', 'local');
    expect(refused).toEqual({ code: 409, body: 'local cannot demote now: a demotion is already draining\n' });
    expect((await requestRoleChange(config, 'promote', 'east')).code).toBe(401); // east has another key
    await expect(requestRoleChange(config, 'promote', 'nope')).rejects.toThrow(/no site named nope in .*; sites are local, backup, east, west, north/);
    await expect(requestRoleChange(config, 'promote', 'north')).rejects.toThrow(/sites\.north\.admin is not set/);
    await expect(requestRoleChange(config, 'promote', 'west')).rejects.toThrow(/west \(127\.0\.0\.1:\d+\): connection refused \(is the site running\?\)/);
  });

  it('prints the success and exits 0', async () => {
    calls.length = 0;
    const r = await cli('promote', '--site', 'backup', '--config', cfg, '--reason', 'maintenance at local');
    expect(r).toEqual({ code: 0, stderr: '', stdout: `backup: promotion started (phase promoting); watch it with geomirror status --config ${cfg}\n` });
    expect(calls).toEqual([{ site: 'backup', action: 'promote', reason: 'maintenance at local' }]);
  });

  it('exits 1 printing the site\'s refusal: runtime refused (409), no such action (409), wrong key (401), unreachable', async () => {
    const busy = await cli('demote', '--site', 'local', '--config', cfg);
    expect(busy).toEqual({ code: 1, stdout: '', stderr: 'geomirror demote: local refused (HTTP 409): local cannot demote now: a demotion is already draining\n' });
    const noDemote = await cli('demote', '--site', 'backup', '--config', cfg);
    expect(noDemote.code).toBe(1);
    expect(noDemote.stderr).toBe('geomirror demote: backup refused (HTTP 409): this site cannot demote (its role has no demote)\n');
    const wrongKey = await cli('promote', '--site', 'east', '--config', cfg);
    expect(wrongKey.code).toBe(1);
    expect(wrongKey.stderr).toBe("geomirror promote: east refused (HTTP 401): unauthorized: token does not match this cluster's key (or was made for another method or path)\n");
    const down = await cli('promote', '--site', 'west', '--config', cfg);
    expect(down.code).toBe(1);
    expect(down.stderr).toMatch(/^geomirror promote: west \(127\.0\.0\.1:\d+\): connection refused \(is the site running\?\)\n$/);
    expect(calls.filter((c) => c.site === 'east')).toEqual([]);
  });

  it('exits 1 from the real command too', async () => {
    const err = await run(process.execPath, [bin, 'demote', '--site', 'local', '--config', cfg]).then(
      () => undefined,
      (e: { code: number; stdout: string; stderr: string }) => e,
    );
    expect(err?.code).toBe(1);
    expect(err!.stderr).toContain('local refused (HTTP 409): local cannot demote now: a demotion is already draining');
  });
});
