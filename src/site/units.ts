// Sizes and durations as users write them in the cluster file and on the command line.
// Binary units only (KiB, MiB, GiB, TiB): "64MB" is refused rather than guessed, because a
// cache or volume off by 5% from what the operator meant is worse than an error at start.

const sizeUnitBytes: Record<string, number> = {
  '': 1,
  B: 1,
  KiB: 1024,
  MiB: 1024 ** 2,
  GiB: 1024 ** 3,
  TiB: 1024 ** 4,
};

/** Parses `64MiB`, `1.5GiB`, `4096` or the number 4096 into whole bytes; undefined if not a size. */
export function parseSizeBytes(value: unknown): number | undefined {
  if (typeof value === 'number') {
    return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  }
  if (typeof value !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(B|KiB|MiB|GiB|TiB)?\s*$/.exec(value);
  if (!m) return undefined;
  const bytes = Number(m[1]) * sizeUnitBytes[m[2] ?? '']!;
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

/** 1073741824 -> "1 GiB", 1536 -> "1.5 KiB": for messages and status tables. */
export function formatBytes(bytes: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = bytes;
  let i = 0;
  while (Math.abs(v) >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  const text = i === 0 ? String(v) : v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2).replace(/\.?0+$/, '');
  return `${text} ${units[i]}`;
}

const durationUnitMs: Record<string, number> = { ms: 1, s: 1000, m: 60_000, '': 1 };

/** Parses `500ms`, `5s`, `1m`, `1.5s` or a number of milliseconds; undefined if not a duration. */
export function parseDurationMs(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? Math.round(value) : undefined;
  if (typeof value !== 'string') return undefined;
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/.exec(value);
  if (!m) return undefined;
  return Math.round(Number(m[1]) * durationUnitMs[m[2] ?? '']!);
}
