// `geomirror cluster --config FILE`: every site of the file on this machine, each in its own
// process (issue 5 item 2), their output interleaved line by line behind the site name.
// Ctrl-C / SIGTERM stops them all. If a site dies while the cluster starts, the others are
// stopped and the command exits non-zero naming it; a site that dies later is reported and
// makes the final exit code non-zero, while the rest keep serving.
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import type { Command } from 'commander';
import { packageRoot, shellCommand } from './package-root.js';
import type { SiteReadyMessage } from './site.js';

/** After this, a site that ignored SIGTERM is killed. Longer than a site's own stop timeout. */
export const clusterStopTimeoutMs = 15_000;

/**
 * What runs a site: sites run compiled JavaScript. Compiled (dist/, an npm install, the Pi
 * bundle) that is main.js next to this module; loaded as TypeScript (tests in-process) it is the
 * package's bin, which runs dist/ and refuses a dist/ older than the sources.
 */
export const siteEntry = import.meta.url.endsWith('.js') ? fileURLToPath(new URL('./main.js', import.meta.url)) : join(packageRoot, 'bin', 'geomirror.mjs');

export interface SiteCommand {
  file: string;
  args: string[];
}

/**
 * Restarting a site that died after it was ready: after delayMsMin, doubling to delayMsMax, at
 * most attemptsMax times in a row (a site that stays ready for stableMs earns a fresh count).
 */
export interface RestartPolicy {
  delayMsMin: number;
  delayMsMax: number;
  attemptsMax: number;
  stableMs: number;
}

export const restartPolicyDefault: RestartPolicy = { delayMsMin: 1_000, delayMsMax: 30_000, attemptsMax: 5, stableMs: 60_000 };

export interface ClusterOptions {
  /** Absolute path of the cluster file. */
  configFile: string;
  /** Sites to run, in start order. */
  sites: string[];
  /** How to run one site; default `node <siteEntry> site --config F --site NAME`. */
  command?: (site: string) => SiteCommand;
  /** Where prefixed site output goes (default the process's stdout/stderr). */
  out?: { write(s: string): unknown };
  err?: { write(s: string): unknown };
  /**
   * Where the manager says what happens to sites (a death with its exit code or signal, a
   * restart, a site ready again), one line each; default `err`. `geomirror start` sends site
   * output to a log file and these lines to the terminal too.
   */
  notice?: { write(s: string): unknown };
  /** Restart sites that die after start (default: no restarts; a dead site stays dead). */
  restart?: RestartPolicy;
  env?: NodeJS.ProcessEnv;
  /** Default clusterStopTimeoutMs. */
  stopTimeoutMs?: number;
}

export interface ClusterHandle {
  /** Resolves once every site reported ready; rejects naming the first site that died at start. */
  ready: Promise<void>;
  /** Resolves with the exit code once every site has exited (and no restart is pending). */
  done: Promise<number>;
  /** Stops every site (SIGTERM, then SIGKILL after clusterStopTimeoutMs). */
  stop(): Promise<number>;
  /** SIGKILL every site still running (a second Ctrl-C); cache replay recovers them at next start. */
  kill(): void;
  pids(): Record<string, number | undefined>;
}

/** One site of the cluster: its current process, and how often it was restarted in a row. */
interface SiteSlot {
  name: string;
  child: ChildProcess;
  ready: boolean;
  /** Ever ready: deaths before that are start failures. */
  started: boolean;
  restarts: number;
  readySinceMs: number;
  restartTimer?: NodeJS.Timeout;
  /** Resolved when this site is finally down (exited with no restart to come). */
  ended: Promise<void>;
  end: () => void;
}

export function defaultSiteCommand(configFile: string): (site: string) => SiteCommand {
  return (site) => ({ file: process.execPath, args: [siteEntry, 'site', '--config', configFile, '--site', site] });
}

/** `exited with code 3` / `was killed by SIGKILL`. */
export function exitText(code: number | null, signal: NodeJS.Signals | null): string {
  return signal ? `was killed by ${signal}` : `exited with code ${code}`;
}

export function startCluster(options: ClusterOptions): ClusterHandle {
  const out = options.out ?? process.stdout;
  const err = options.err ?? process.stderr;
  const notice = options.notice ?? err;
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

  const spawnSite = (slot: SiteSlot): void => {
    const { name } = slot;
    const { file, args } = command(name);
    // detached: a terminal's Ctrl-C reaches only the manager, which stops sites in order;
    // the IPC channel lets each site stop itself if the manager dies.
    const child = spawn(file, args, { stdio: ['ignore', 'pipe', 'pipe', 'ipc'], env, detached: true });
    slot.child = child;
    slot.ready = false;
    const prefix = `${name.padEnd(width)} | `;
    pipeLines(child.stdout!, (line) => out.write(`${prefix}${line}\n`));
    pipeLines(child.stderr!, (line) => err.write(`${prefix}${line}\n`));
    child.on('message', (msg: SiteReadyMessage) => {
      if (msg?.type !== 'geomirror-site-ready' || slot.ready || slot.child !== child) return;
      slot.ready = true;
      slot.readySinceMs = Date.now();
      if (slot.started) notice.write(`geomirror: site ${name} is running again (pid ${child.pid}, restart ${slot.restarts})\n`);
      slot.started = true;
      if (slots.every((p) => p.ready)) resolveReady();
    });
    child.once('error', (e) => err.write(`${prefix}cannot start: ${e.message}\n`));
    // 'close', not 'exit': only then are the site's stdout and stderr drained, so its last lines
    // (a shutdown message) are printed before the manager calls it down and returns.
    child.once('close', (code, signal) => onExit(slot, child, code, signal));
  };

  const onExit = (slot: SiteSlot, child: ChildProcess, code: number | null, signal: NodeJS.Signals | null): void => {
    if (slot.child !== child) return;
    const { name } = slot;
    const clean = stopping && (code === 0 || signal === 'SIGTERM');
    if (clean) return slot.end();
    failed = true;
    const how = exitText(code, signal);
    if (!slot.started) {
      notice.write(`geomirror: site ${name} ${how} during start (see its output); stopping the other sites\n`);
      rejectReady(new Error(`site ${name} ${how} during start`));
      slot.end();
      void stop();
      return;
    }
    if (stopping) return slot.end();
    const policy = options.restart;
    if (policy !== undefined && slot.ready && Date.now() - slot.readySinceMs >= policy.stableMs) slot.restarts = 0;
    if (policy === undefined || slot.restarts >= policy.attemptsMax) {
      const why = policy === undefined ? '' : ` and was restarted ${slot.restarts} times in a row; giving up on it`;
      notice.write(`geomirror: site ${name} (pid ${child.pid}) ${how}${why}; the other sites keep running\n`);
      slot.end();
      return;
    }
    slot.restarts++;
    const delayMs = Math.min(policy.delayMsMax, policy.delayMsMin * 2 ** (slot.restarts - 1));
    notice.write(`geomirror: site ${name} (pid ${child.pid}) ${how}; restarting it in ${delayMs / 1000} s (restart ${slot.restarts} of at most ${policy.attemptsMax})\n`);
    slot.ready = false;
    slot.restartTimer = setTimeout(() => {
      slot.restartTimer = undefined;
      if (stopping) return slot.end();
      spawnSite(slot);
    }, delayMs);
  };

  const slots: SiteSlot[] = options.sites.map((name) => {
    let end!: () => void;
    const ended = new Promise<void>((res) => (end = res));
    const slot = { name, ready: false, started: false, restarts: 0, readySinceMs: 0, ended, end } as SiteSlot;
    return slot;
  });
  for (const slot of slots) spawnSite(slot);

  const running = (p: SiteSlot): boolean => p.child.exitCode === null && p.child.signalCode === null;
  const done = Promise.all(slots.map((p) => p.ended)).then(() => (failed ? 1 : 0));

  let stopped: Promise<number> | undefined;
  function stop(): Promise<number> {
    stopped ??= (async () => {
      stopping = true;
      for (const p of slots) {
        if (p.restartTimer) {
          clearTimeout(p.restartTimer);
          p.restartTimer = undefined;
          p.end();
        }
        if (running(p)) p.child.kill('SIGTERM');
      }
      const timer = setTimeout(() => {
        for (const p of slots) {
          if (running(p)) {
            notice.write(`geomirror: site ${p.name} did not stop within ${stopTimeoutMs} ms; killing it\n`);
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
    for (const p of slots) {
      if (p.restartTimer) {
        clearTimeout(p.restartTimer);
        p.restartTimer = undefined;
        p.end();
      }
      if (running(p)) p.child.kill('SIGKILL');
    }
  }

  return { ready, done, stop, kill, pids: () => Object.fromEntries(slots.map((p) => [p.name, p.child.pid])) };
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
    .option('--restart', `restart a site that dies after start (after ${restartPolicyDefault.delayMsMin / 1000} s, doubling to ${restartPolicyDefault.delayMsMax / 1000} s, at most ${restartPolicyDefault.attemptsMax} times in a row)`)
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror cluster --config targets/loopback/cluster.yaml
  $ geomirror cluster -c cascade.yaml --restart 2>&1 | grep -v '"level":"debug"'

Each line of output starts with the site's name; lines starting "geomirror:" say when a site
dies (with its exit code or signal) and when it is restarted. Ctrl-C or SIGTERM stops every
site; the exit code is 0 when all stopped cleanly, 1 when a site failed.`,
    )
    .action(async (opts: { config: string; restart?: boolean }) => {
      // Loaded here, not at the top: `geomirror --help` and `geomirror start` (which imports
      // startCluster) must not pay for the config loader and X.509 (issue 19).
      const [{ ConfigError, loadConfig }, { preparePki }] = await Promise.all([import('../site/config.js'), import('../site/pki.js')]);
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
      const cluster = startCluster({ configFile, sites, ...(opts.restart ? { restart: restartPolicyDefault } : {}) });
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
        () => process.stderr.write(`geomirror cluster: ${sites.length} sites running (${sites.join(', ')}); Ctrl-C stops them; see ${shellCommand()} status --config ${opts.config}\n`),
        () => undefined,
      );
      process.exitCode = await cluster.done;
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    });
}
