// `geomirror events [--now] [--json]`: one stream of state changes from every site of a cluster
// file (issue 19 item 3), like `drbdsetup events2`. Each site's admin port streams its own
// events as NDJSON (GET /events, src/site/events.ts); this command merges them in arrival order,
// one line per event. --now prints what exists at every site and exits; without it the command
// first prints what exists, then follows, reconnecting (with backoff) to a site that went away
// and saying so.
// The command line (its options and help) is events-command.ts, which loads this module
// when the command runs.
import { parseAddress } from '../site/config.js';
import type { EventWhat, SiteEvent } from '../site/events.js';
import { adminStream, type AdminCredentials } from './admin-client.js';
import { statusTargets, statusTimeoutMs, type StatusTarget } from './status.js';

/** A site that went away is retried after this, doubling up to eventsRetryMsMax. */
export const eventsRetryMsMin = 250;
export const eventsRetryMsMax = 5_000;
/** An event line longer than this is not from a geomirror site: the stream is dropped. */
export const eventLineCharsMax = 64 * 1024;

const whats: readonly EventWhat[] = ['site', 'peer', 'role', 'epoch', 'state', 'link', 'sync', 'progress', 'failover', 'fenced', 'cache', 'device'];

/** An event as this command prints it: a site's own, or `admin` (this command lost or regained a site). */
export type CliEvent = SiteEvent | (Omit<SiteEvent, 'what'> & { what: 'admin' });

/** Checks one NDJSON line from the network before printing it (validate at the edge). */
export function parseEventLine(line: string, from: string): SiteEvent {
  let x: Partial<SiteEvent>;
  try {
    x = JSON.parse(line) as Partial<SiteEvent>;
  } catch {
    throw new Error(`${from}: /events sent a line that is not JSON`);
  }
  const ok = typeof x === 'object' && x !== null && typeof x.site === 'string' && typeof x.text === 'string' && typeof x.at === 'string' &&
    (x.type === 'exists' || x.type === 'change') && whats.includes(x.what as EventWhat) && typeof x.seq === 'number';
  if (!ok) throw new Error(`${from}: /events sent something that is not a geomirror event`);
  return x as SiteEvent;
}

/** `02:00:00.123 local  link to east down (connecting)`; `exists:` marks the state at connect. */
export function formatEvent(e: CliEvent, siteWidth = 0): string {
  const time = /T(\d\d:\d\d:\d\d\.\d\d\d)/.exec(e.at)?.[1] ?? e.at;
  const text = `${e.type === 'exists' ? 'exists: ' : ''}${e.text}`.replace(/\p{Cc}+/gu, ' ');
  return `${time} ${e.site.padEnd(siteWidth)}  ${text}`;
}

interface Out {
  write(s: string): unknown;
}

/** Reads NDJSON lines from a stream, bounded; resolves when it ends, rejects on a bad line. */
function readLines(res: NodeJS.ReadableStream & { destroy(err?: Error): void }, onLine: (line: string) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    let pending = '';
    res.setEncoding('utf8');
    res.on('data', (chunk: string) => {
      pending += chunk;
      let nl: number;
      try {
        while ((nl = pending.indexOf('\n')) >= 0) {
          const line = pending.slice(0, nl);
          pending = pending.slice(nl + 1);
          if (line.trim() !== '') onLine(line);
        }
      } catch (err) {
        res.destroy(err as Error);
        return;
      }
      if (pending.length > eventLineCharsMax) res.destroy(new Error(`an /events line is longer than ${eventLineCharsMax} characters`));
    });
    res.on('end', resolve);
    res.on('error', reject);
    res.on('close', resolve);
  });
}

/** GET `path` on a target's admin port as a stream, HTTPS and authenticated like every admin request. */
function openEvents(t: StatusTarget, path: string, creds: AdminCredentials): ReturnType<typeof adminStream> {
  const a = parseAddress(t.admin);
  if (a === undefined) return Promise.reject(new Error(`${t.admin} is not HOST:PORT`));
  return adminStream({ host: a.host, port: a.port, path, ...(t.site !== undefined ? { site: t.site } : {}), creds, timeoutMs: statusTimeoutMs });
}

function why(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  return e.code === 'ECONNREFUSED' ? 'connection refused (is the site running?)' : e.code === 'ETIMEDOUT' ? 'no answer' : e.message;
}

/** --now: every site's `exists` events, in target order. Returns the targets that failed. */
export async function eventsNow(targets: readonly StatusTarget[], creds: AdminCredentials, print: (e: CliEvent) => void): Promise<{ target: StatusTarget; error: string }[]> {
  const answers = await Promise.all(
    targets.map(async (t) => {
      const events: SiteEvent[] = [];
      try {
        const res = await openEvents(t, '/events?now=1', creds);
        if (res.statusCode !== 200) {
          res.resume();
          return { target: t, events, error: `HTTP ${res.statusCode} on /events (an older geomirror?)` };
        }
        await readLines(res, (line) => events.push(parseEventLine(line, t.admin)));
        return { target: t, events };
      } catch (err) {
        return { target: t, events, error: why(err) };
      }
    }),
  );
  for (const a of answers) for (const e of a.events) print(e);
  return answers.flatMap((a) => (a.error !== undefined ? [{ target: a.target, error: a.error }] : []));
}

/** Follows every site until `signal` aborts, reconnecting with backoff; `print` gets each event. */
export async function eventsFollow(targets: readonly StatusTarget[], creds: AdminCredentials, print: (e: CliEvent) => void, signal: AbortSignal): Promise<void> {
  const cliEvent = (t: StatusTarget, to: string, text: string): CliEvent => ({ seq: 0, at: new Date().toISOString(), type: 'change', site: t.name, what: 'admin', to, text });
  const follow = async (t: StatusTarget): Promise<void> => {
    let retryMs = eventsRetryMsMin;
    let lost = false;
    while (!signal.aborted) {
      let failure: string;
      try {
        const res = await openEvents(t, '/events', creds);
        const stop = (): void => void res.destroy();
        signal.addEventListener('abort', stop, { once: true });
        try {
          if (res.statusCode !== 200) throw new Error(`HTTP ${res.statusCode} on /events (an older geomirror?)`);
          if (lost) print(cliEvent(t, 'reachable', `admin ${t.admin} answers again`));
          lost = false;
          retryMs = eventsRetryMsMin;
          await readLines(res, (line) => print(parseEventLine(line, t.admin)));
          failure = 'the event stream ended (site stopped?)';
        } finally {
          signal.removeEventListener('abort', stop);
          res.destroy();
        }
      } catch (err) {
        failure = why(err);
      }
      if (signal.aborted) return;
      if (!lost) print(cliEvent(t, 'unreachable', `admin ${t.admin}: ${failure}; retrying`));
      lost = true;
      await new Promise<void>((r) => {
        const timer = setTimeout(r, retryMs);
        signal.addEventListener('abort', () => {
          clearTimeout(timer);
          r();
        }, { once: true });
      });
      retryMs = Math.min(eventsRetryMsMax, retryMs * 2);
    }
  };
  await Promise.all(targets.map(follow));
}

/** What `geomirror events` is given (src/cli/events-command.ts declares the options). */
export interface EventsCliOptions {
  config?: string;
  admin?: string;
  now?: boolean;
  json?: boolean;
}

/** `geomirror events`: what exists at every site, then (without --now) every change until Ctrl-C; with --now, exit code 1 when a site does not answer. */
export async function eventsCommand(opts: EventsCliOptions): Promise<void> {
  let targets: StatusTarget[];
  let creds: AdminCredentials;
  try {
    ({ targets, creds } = statusTargets(opts));
  } catch (e) {
    process.stderr.write(`geomirror events: ${(e as Error).message}\n`);
    process.exitCode = 1;
    return;
  }
  const out: Out = process.stdout;
  const width = Math.max(...targets.map((t) => t.name.length));
  const print = (e: CliEvent): void => void out.write(opts.json ? `${JSON.stringify(e)}\n` : `${formatEvent(e, width)}\n`);
  if (opts.now) {
    const failed = await eventsNow(targets, creds, print);
    for (const f of failed) process.stderr.write(`${f.target.name} (${f.target.admin}): ${f.error}\n`);
    process.exitCode = failed.length > 0 ? 1 : 0;
    return;
  }
  const abort = new AbortController();
  const onSignal = (): void => abort.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  await eventsFollow(targets, creds, print, abort.signal);
  process.off('SIGINT', onSignal);
  process.off('SIGTERM', onSignal);
}
