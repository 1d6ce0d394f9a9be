// Site logs: one structured JSON line per state change (pino), so operators can grep and ship
// them; when stdout is a terminal the same records are printed as short human lines instead
// (a small formatter here rather than pino-pretty, which is not a dependency).
//
// GEOMIRROR_LOG_FORMAT=json|pretty overrides the terminal test (the cluster manager sets it
// for its children, whose stdout is a pipe); GEOMIRROR_LOG_LEVEL sets the level.
import { pino, type Logger, type LevelWithSilent } from 'pino';

export type { Logger };
export type LogFormat = 'json' | 'pretty';

export interface LoggerOptions {
  /** Site name: on every line, and the prefix of pretty lines. */
  site?: string;
  level?: LevelWithSilent;
  /** Default: GEOMIRROR_LOG_FORMAT, else pretty on a TTY, else json. */
  format?: LogFormat;
  /** Default: process.stdout. Anything with write(string) (tests pass a collector). */
  destination?: { write(chunk: string): unknown; isTTY?: boolean };
  /** ANSI colours in pretty mode; default: the destination is a TTY and NO_COLOR is unset. */
  color?: boolean;
}

const levelNames = ['trace', 'debug', 'info', 'warn', 'error', 'fatal', 'silent'] as const;

export function logFormatFromEnv(isTTY: boolean): LogFormat {
  const env = process.env.GEOMIRROR_LOG_FORMAT;
  if (env === 'json' || env === 'pretty') return env;
  return isTTY ? 'pretty' : 'json';
}

function levelFromEnv(): LevelWithSilent {
  const env = process.env.GEOMIRROR_LOG_LEVEL as LevelWithSilent | undefined;
  return env !== undefined && (levelNames as readonly string[]).includes(env) ? env : 'info';
}

/** The root logger of one site process (or of a CLI command when `site` is absent). */
export function createLogger(options: LoggerOptions = {}): Logger {
  const dest = options.destination ?? process.stdout;
  const isTTY = dest.isTTY === true;
  const format = options.format ?? logFormatFromEnv(isTTY);
  const color = options.color ?? (isTTY && process.env.NO_COLOR === undefined);
  const stream =
    format === 'json'
      ? { write: (line: string) => dest.write(line) }
      : { write: (line: string) => dest.write(`${formatPretty(line, color)}\n`) };
  return pino(
    {
      level: options.level ?? levelFromEnv(),
      base: { pid: process.pid, ...(options.site === undefined ? {} : { site: options.site }) },
      timestamp: pino.stdTimeFunctions.isoTime,
      formatters: { level: (label) => ({ level: label }) },
    },
    stream,
  );
}

/** A child logger for one component of a site (`link`, `nbd`, `resync`, `admin`, ...). */
export function componentLogger(parent: Logger, component: string, fields: Record<string, unknown> = {}): Logger {
  return parent.child({ component, ...fields });
}

/**
 * The one line per state change: `subject: from -> to`, with `event: "state"` so tools can
 * follow a mirror through degraded -> resyncing -> in-sync.
 */
export function logStateChange(log: Logger, subject: string, from: string, to: string, fields: Record<string, unknown> = {}): void {
  log.info({ event: 'state', subject, from, to, ...fields }, `${subject}: ${from} -> ${to}`);
}

const hiddenKeys = new Set(['time', 'level', 'msg', 'pid', 'hostname', 'site', 'component', 'err', 'event', 'subject', 'from', 'to']);
const levelColor: Record<string, string> = { trace: '90', debug: '36', info: '32', warn: '33', error: '31', fatal: '35' };

/** One JSON log line -> `12:00:01.234 INFO  east/link  message key=value`. Non-JSON passes through. */
export function formatPretty(line: string, color = false): string {
  let rec: Record<string, unknown>;
  try {
    rec = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line.replace(/\n$/, '');
  }
  const paint = (code: string, s: string): string => (color ? `\x1b[${code}m${s}\x1b[0m` : s);
  const time = typeof rec.time === 'string' ? rec.time.slice(11, 23) : '';
  const level = String(rec.level ?? 'info');
  const where = [rec.site, rec.component].filter((x) => x !== undefined).join('/');
  const extras = Object.entries(rec)
    .filter(([k]) => !hiddenKeys.has(k))
    .map(([k, v]) => `${k}=${typeof v === 'string' && !/\s/.test(v) ? v : JSON.stringify(v)}`);
  const parts = [paint('90', time), paint(levelColor[level] ?? '0', level.toUpperCase().padEnd(5))];
  if (where) parts.push(paint('1', where));
  parts.push(String(rec.msg ?? ''));
  if (extras.length > 0) parts.push(paint('90', extras.join(' ')));
  let out = parts.join(' ');
  const err = rec.err as { message?: string; stack?: string } | undefined;
  if (err) out += `\n  ${paint('31', err.stack ?? err.message ?? JSON.stringify(err))}`;
  return out;
}
