// Sizes and durations as users write them in the cluster file and on the command line.
//
// Sizes have ONE meaning, binary: K, KB and KiB are all 1024 bytes; M, MB, MiB 1024^2; G, GB,
// GiB 1024^3; T, TB, TiB 1024^4 (the letter's case does not matter). That is how qemu-img,
// DRBD, LVM and dd read `1G`, the spelling storage people type; accepting `1GB` as anything
// else would make `1G` and `1GB` two volumes 7% apart. README "Configuration" and the JSON
// Schema (docs/cluster.schema.json) say the same.

/** Bytes per unit letter (binary; see above). */
const sizeUnitBytes: Record<string, number> = {
  '': 1,
  K: 1024,
  M: 1024 ** 2,
  G: 1024 ** 3,
  T: 1024 ** 4,
};

/**
 * A size as text: a number, then optionally K/M/G/T with an optional `i` and `B`, or `B` alone,
 * in either case. Written without regex flags so the JSON Schema can carry the same pattern.
 */
export const sizeTextPattern = /^\s*(\d+(?:\.\d+)?)\s*(?:([KkMmGgTt])(?:[iI]?[Bb])?|[Bb])?\s*$/;

/** What the size syntax is, for error messages and the schema. */
export const sizeSyntaxText = 'a number of bytes or a number with K, M, G or T (binary: 1G = 1GB = 1GiB = 1073741824 bytes)';

/** Parses `64MiB`, `64M`, `64MB`, `1.5GiB`, `4096` or the number 4096 into whole bytes; undefined if not a size. */
export function parseSizeBytes(value: unknown): number | undefined {
  if (typeof value === 'number') {
    return Number.isSafeInteger(value) && value >= 0 ? value : undefined;
  }
  if (typeof value !== 'string') return undefined;
  const m = sizeTextPattern.exec(value);
  if (!m) return undefined;
  const bytes = Number(m[1]) * sizeUnitBytes[(m[2] ?? '').toUpperCase()]!;
  return Number.isSafeInteger(bytes) ? bytes : undefined;
}

const byteUnits = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'] as const;

/** Three significant digits at most, trailing zeros of the fraction dropped: 1.5, 9.77, 97.7, 977, 200. */
function significant(v: number): string {
  const text = v.toFixed(v >= 100 ? 0 : v >= 10 ? 1 : 2);
  return text.includes('.') ? text.replace(/\.?0+$/, '') : text;
}

/** 1073741824 -> "1 GiB", 1536 -> "1.5 KiB", 200 MiB -> "200 MiB": for messages and status tables. */
export function formatBytes(bytes: number): string {
  let v = Math.abs(bytes);
  let i = 0;
  while (v >= 1024 && i < byteUnits.length - 1) {
    v /= 1024;
    i++;
  }
  let text = i === 0 ? String(v) : significant(v);
  // 1048575 bytes rounds to "1024 KiB": say "1 MiB" instead.
  if (i > 0 && text === '1024' && i < byteUnits.length - 1) {
    i++;
    text = '1';
  }
  return `${bytes < 0 ? '-' : ''}${text} ${byteUnits[i]}`;
}

/** A duration as text: a number, then optionally ms, s or m (no unit: milliseconds). */
export const durationTextPattern = /^\s*(\d+(?:\.\d+)?)\s*(ms|s|m)?\s*$/;

const durationUnitMs: Record<string, number> = { ms: 1, s: 1000, m: 60_000, '': 1 };

/** Parses `500ms`, `5s`, `1m`, `1.5s` or a number of milliseconds; undefined if not a duration. */
export function parseDurationMs(value: unknown): number | undefined {
  if (typeof value === 'number') return Number.isFinite(value) && value >= 0 ? Math.round(value) : undefined;
  if (typeof value !== 'string') return undefined;
  const m = durationTextPattern.exec(value);
  if (!m) return undefined;
  return Math.round(Number(m[1]) * durationUnitMs[m[2] ?? '']!);
}
