// `geomirror site --config FILE --site NAME`: one site per process (one per Raspberry Pi, or
// one child of `geomirror cluster`). Stops cleanly on SIGINT/SIGTERM, and when the cluster
// manager that spawned it goes away (its IPC channel closes), so no site outlives a killed
// manager.
import v8 from 'node:v8';
import type { Command } from 'commander';
import type { RunningSite } from '../site/run.js';

/** The message a site sends its cluster manager over IPC once it is serving. */
export interface SiteReadyMessage {
  type: 'geomirror-site-ready';
  site: string;
  admin?: string;
}

/** Time a site gets to stop cleanly after a signal before it exits anyway. */
export const siteStopTimeoutMs = 10_000;

export function registerSite(program: Command): void {
  program
    .command('site')
    .description('run one site of a cluster file on this machine')
    .requiredOption('-c, --config <file>', 'the cluster file (YAML)')
    .requiredOption('-s, --site <name>', 'which site of the file to run')
    .addHelpText(
      'after',
      `
Examples:
  $ geomirror site --config targets/loopback/cluster.yaml --site east
  $ GEOMIRROR_LOG_FORMAT=json geomirror site -c /etc/geomirror/cluster.yaml -s pi-north

Logs are JSON lines, or human lines on a terminal (GEOMIRROR_LOG_FORMAT=json|pretty,
GEOMIRROR_LOG_LEVEL=debug|info|warn). Ctrl-C or SIGTERM stops the site cleanly.`,
    )
    .action(async (opts: { config: string; site: string }) => {
      const code = await siteCommand(opts.config, opts.site);
      // Exit outright: a runtime's leftover handle must not keep a stopped site alive (logs
      // are written synchronously, so nothing is lost).
      process.exit(code);
    });
}

/**
 * V8's old-generation growth for a site process (`--heap-growing-percent`, read at every
 * mark-compact, so it can be set at run time). A site's live heap is small (~14 MiB) while its
 * sockets and payloads churn external memory; with V8's default growth the limit after each
 * mark-compact left less headroom than the new space holds, so every external-memory scavenge
 * started the next mark-compact: 8-10 a second at 1 MiB writes, a third of each site's CPU in
 * concurrent marking and sweeping (perf). With the limit at 4x the live heap they come every
 * few seconds. Measured on the 3-site bench cluster, 3 alternating runs each: 1 MiB QD4
 * 23800-27500 -> 15800-16200 CPU-us per op, 4 KiB QD16 292-353 -> 258-296; primary peak RSS
 * 158-165 -> 189-195 MiB (issue 18).
 */
export const siteHeapGrowingPercent = 300;

async function siteCommand(configFile: string, siteName: string): Promise<number> {
  v8.setFlagsFromString(`--heap-growing-percent=${siteHeapGrowingPercent}`);
  // Loaded here, not at the top: the whole site (config, net, nbd, metrics, devices) is most of
  // what the command loads, and `geomirror --help` or `status` must not pay for it.
  const [{ ConfigError, loadConfig }, { runSite, StartupError }, { payloadPool, payloadPoolTrimIntervalMs }] = await Promise.all([
    import('../site/config.js'),
    import('../site/run.js'),
    import('../../hal/payload-pool.js'),
  ]);
  let running: RunningSite;
  try {
    running = await runSite(loadConfig(configFile), siteName);
  } catch (err) {
    if (err instanceof ConfigError || err instanceof StartupError) process.stderr.write(`${err.message}\n`);
    else process.stderr.write(`site ${siteName} failed to start: ${(err as Error).stack ?? String(err)}\n`);
    return 1;
  }
  const ready: SiteReadyMessage = { type: 'geomirror-site-ready', site: running.name, ...(running.admin ? { admin: running.admin.url } : {}) };
  process.send?.(ready);
  return new Promise<number>((resolve) => {
    let stopping = false;
    const stop = (why: string): void => {
      if (stopping) return;
      stopping = true;
      running.log.info({ event: 'signal', why }, `${why}: stopping`);
      const timer = setTimeout(() => {
        running.log.error({ event: 'stop-timeout', timeoutMs: siteStopTimeoutMs }, `site did not stop within ${siteStopTimeoutMs} ms; exiting anyway`);
        resolve(1);
      }, siteStopTimeoutMs);
      timer.unref();
      running.stop().then(
        () => {
          clearTimeout(timer);
          resolve(0);
        },
        (err: unknown) => {
          clearTimeout(timer);
          running.log.error({ err }, 'stop failed');
          resolve(1);
        },
      );
    };
    // Idle payload slots go back after a burst of large writes (hal/payload-pool.ts trim()).
    const trim = setInterval(() => payloadPool.trim(), payloadPoolTrimIntervalMs);
    trim.unref();
    process.once('SIGINT', () => stop('SIGINT'));
    process.once('SIGTERM', () => stop('SIGTERM'));
    if (process.connected) process.once('disconnect', () => stop('cluster manager went away'));
    running.done?.then(
      () => stop('runtime ended'),
      (err: unknown) => {
        running.log.fatal({ err }, 'runtime failed');
        stopping = true;
        running.stop().finally(() => resolve(1));
      },
    );
  }).finally(() => {
    if (process.connected) process.disconnect();
  });
}
