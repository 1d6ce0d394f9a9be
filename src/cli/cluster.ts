// `geomirror cluster --config FILE`: every site of the file on this machine, each in its own
// process (issue 5 item 2), their output interleaved line by line behind the site name.
// Ctrl-C / SIGTERM stops them all. If a site dies while the cluster starts, the others are
// stopped and the command exits non-zero naming it; a site that dies later is reported and
// makes the final exit code non-zero, while the rest keep serving.
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { ConfigError, loadConfig } from '../site/config.js';
import { preparePki } from '../site/pki.js';
import type { SiteReadyMessage } from './site.js';

/** After this, a site that ignored SIGTERM is killed. Longer than a site's own stop timeout. */
export const clusterStopTimeoutMs = 15_000;

const geomirrorBin = fileURLToPath(new URL('../../bin/geomirror.mjs', import.meta.url));

export interface SiteCommand {
  file: string;
  args: string[];
}

export interface ClusterOptions {
  /** Absolute path of the cluster file. */
  configFile: string;
  /** Sites to run, in start order. */
  sites: string[];
  /** How to run one site; default `node bin/geomirror.mjs site --config F --site NAME`. */
  command?: (site: string) => SiteCommand;
  /** Where prefixed site output goes (default the process's stdout/stderr). */
  out?: { write(s: string): unknown };
  err?: { write(s: string): unknown };
  env?: NodeJS.ProcessEnv;
  /** Default clusterStopTimeoutMs. */
  stopTimeoutMs?: number;
}

export interface ClusterHandle {
  /** Resolves once every site reported ready; rejects naming the first site that died at start. */
  ready: Promise<void>;
  /** Resolves with the exit code once every site has exited. */
  done: Promise<number>;
  /** Stops every site (SIGTERM, then SIGKILL after clusterStopTimeoutMs). */
  stop(): Promise<number>;
  /** SIGKILL every site still running (a second Ctrl-C); cache replay recovers them at next start. */
  kill(): void;
  pids(): Record<string, number | undefined>;
}

interface SiteProc {
  name: string;
  child: ChildProcess;
  ready: boolean;
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
}

export function defaultSiteCommand(configFile: string): (site: string) => SiteCommand {
  return (site) => ({ file: process.execPath, args: [geomirrorBin, 'site', '--config', configFile, '--site', site] });
}

export function startCluster(options: ClusterOptions): ClusterHandle {
  const out = options.out ?? process.stdout;
  const err = options.err ?? process.stderr;
  const command = options.command ?? defaultSiteCommand(options.configFile);
  const stopTimeoutMs = options.stopTimeoutMs ?? clusterStopTimeoutMs;
  const width = Math.max(...options.sites.map((s) => s.length));
  const env = { ...process.env, ...options.env };
  // Children write to pipes; keep the human format when our own output is a terminal.
  env.GEOMIRROR_LOG_FORMAT ??= process.stdout.isTTY ? 'pretty' : 'json';

  let stopping = false;
  let failed = false;
  let resolveReady!: () => void;
  let rejectReady!: (e: Error) => void;
  const ready = new Promise<void>((res, rej) => {
    resolveReady = res;
    rejectReady = rej;
  });
  ready.catch(() => undefined); // callers that only await done must not see an unhandled rejection

  const procs: SiteProc[] = options.sites.map((name) => {
    const { file, args } = command(name);
    // detached: a terminal's Ctrl-C reaches only the manager, which stops sites in order;
    // the IPC channel lets each site stop itself if the manager dies.
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env, detached: true });
    const prefix = `${name.padEnd(width)} | `;
    pipeLines(child.stdout!, (line) => out.write(`${prefix}${line}\n`));
    pipeLines(child.stderr!, (line) => err.write(`${prefix}${line}\n`));
    const proc: SiteProc = {
      name,
      child,
      ready: false,
      exited: new Promise((res) => child.once('exit', (code, signal) => res({ code, signal }))),
    };
    child.on('message', (msg: SiteReadyMessage) => {
      if (msg?.type !== 'geomirror-site-ready' || proc.ready) return;
      proc.ready = true;
      if (procs.every((p) => p.ready)) resolveReady();
    });
    child.once('error', (e) => err.write(`${prefix}cannot start: ${e.message}\n`));
    void proc.exited.then(({ code, signal }) => {
      const clean = stopping && (code === 0 || signal === 'SIGTERM');
      if (clean) return;
      failed = true;
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      if (!proc.ready) {
        err.write(`geomirror cluster: site ${name} ${how} during start (its output is above); stopping the other sites\n`);
        rejectReady(new Error(`site ${name} ${how} during start`));
        void stop();
      } else if (!stopping) {
        err.write(`geomirror cluster: site ${name} ${how}; the other sites keep running\n`);
      }
    });
    return proc;
  });

  const done = Promise.all(procs.map((p) => p.exited)).then(() => (failed ? 1 : 0));

  let stopped: Promise<number> | undefined;
  function stop(): Promise<number> {
    stopped ??= (async () => {
      stopping = true;
      for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGTERM');
      const timer = setTimeout(() => {
        for (const p of procs) {
          if (p.child.exitCode === null && p.child.signalCode === null) {
            err.write(`geomirror cluster: site ${p.name} did not stop within ${stopTimeoutMs} ms; killing it\n`);
            p.child.kill('SIGKILL');
            failed = true;
          }
        }
      }, stopTimeoutMs);
      const code = await done;
      clearTimeout(timer);
      return code;
    })();
    return stopped;
  }

  function kill(): void {
    stopping = true;
    failed = true;
    for (const p of procs) if (p.child.exitCode === null && p.child.signalCode === null) p.child.kill('SIGKILL');
  }

  return { ready, done, stop, kill, pids: () => Object.fromEntries(procs.map((p) => [p.name, p.child.pid])) };
}

function pipeLines(stream: NodeJS.ReadableStream, onLine: (line: string) => void): void {
  let pending = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    pending += chunk;
    let nl: number;
    while ((nl = pending.indexOf('\n')) >= 0) {
      onLine(pending.slice(0, nl));
      pending = pending.slice(nl + 1);
    }
  });
  stream.on('end', () => {
    if (pending !== '') onLine(pending);
    pending = '';
  });
}

export function registerCluster(program: Command): void {
  program
    .command('cluster')
    .description('run every site of a cluster file on this machine, one process each')
    .requiredOption('-c, --config <file>', 'the cluster file (YAML)')
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror cluster --config targets/loopback/cluster.yaml
  $ geomirror cluster -c cascade.yaml 2>&1 | grep -v '"level":"debug"'

Each line of output starts with the site's name. Ctrl-C or SIGTERM stops every site; the
exit code is 0 when all stopped cleanly, 1 when a site failed.`,
    )
    .action(async (opts: { config: string }) => {
      let configFile: string;
      let sites: string[];
      try {
        const config = loadConfig(opts.config);
        configFile = config.file;
        sites = config.siteNames;
        // Every site runs on this machine, so this machine holds the cluster CA: a missing CA or
        // site certificate is made here (a lone `geomirror site` never makes one).
        const { created } = await preparePki(config);
        for (const f of created) process.stderr.write(`geomirror cluster: created ${f.what} ${f.path}\n`);
      } catch (e) {
        process.stderr.write(`${e instanceof ConfigError ? e.message : String(e)}\n`);
        process.exitCode = 1;
        return;
      }
      const cluster = startCluster({ configFile, sites });
      let signals = 0;
      const onSignal = (sig: NodeJS.Signals): void => {
        if (++signals === 1) {
          process.stderr.write(`geomirror cluster: ${sig}: stopping ${sites.length} sites (again to kill them at once)\n`);
          void cluster.stop();
        } else {
          process.stderr.write(`geomirror cluster: ${sig} again: killing every site\n`);
          cluster.kill();
        }
      };
      process.on('SIGINT', onSignal);
      process.on('SIGTERM', onSignal);
      cluster.ready.then(
        () => process.stderr.write(`geomirror cluster: ${sites.length} sites running (${sites.join(', ')}); Ctrl-C stops them; see geomirror status --config ${opts.config}\n`),
        () => undefined,
      );
      process.exitCode = await cluster.done;
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    });
}
