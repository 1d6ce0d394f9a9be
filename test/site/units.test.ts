// Sizes as people read them: formatBytes over powers of two and of ten (issue 19: 200 MiB was
// shown as "2 MiB" and 100 GiB as "1 GiB" because trailing zeros of integers were stripped).
import { describe, expect, it } from 'vitest';
import { formatBytes, parseSizeBytes } from '../../src/site/units.js';

describe('formatBytes', () => {
  it('shows every power of two exactly, in the largest unit it fills', () => {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    for (let k = 0; k <= 49; k++) {
      const unit = Math.min(Math.floor(k / 10), units.length - 1);
      expect(formatBytes(2 ** k), `2^${k}`).toBe(`${2 ** (k - 10 * unit)} ${units[unit]}`);
    }
  });

  it('shows powers of ten with at most three significant digits, zeros of integers kept', () => {
    const want = ['1 B', '10 B', '100 B', '1000 B', '9.77 KiB', '97.7 KiB', '977 KiB', '9.54 MiB', '95.4 MiB', '954 MiB', '9.31 GiB', '93.1 GiB', '931 GiB', '9.09 TiB', '90.9 TiB'];
    want.forEach((text, k) => expect(formatBytes(10 ** k), `10^${k}`).toBe(text));
  });

  it('keeps the zeros the issue saw stripped, and round trips through parseSizeBytes', () => {
    expect(formatBytes(200 * 2 ** 20)).toBe('200 MiB');
    expect(formatBytes(100 * 2 ** 30)).toBe('100 GiB');
    expect(formatBytes(32 * 2 ** 20)).toBe('32 MiB');
    expect(formatBytes(10 * 2 ** 10)).toBe('10 KiB');
    expect(formatBytes(1536)).toBe('1.5 KiB');
    expect(formatBytes(1.25 * 2 ** 30)).toBe('1.25 GiB');
    expect(formatBytes(0)).toBe('0 B');
    expect(formatBytes(1023)).toBe('1023 B');
    expect(formatBytes(-2048)).toBe('-2 KiB');
    for (const bytes of [2 ** 20, 200 * 2 ** 20, 100 * 2 ** 30, 1536, 64 * 2 ** 20]) {
      expect(parseSizeBytes(formatBytes(bytes).replace(' ', ''))).toBe(bytes);
    }
  });

  it('rounds up into the next unit instead of showing 1024 of the smaller one', () => {
    expect(formatBytes(2 ** 20 - 1)).toBe('1 MiB');
    expect(formatBytes(2 ** 30 - 1)).toBe('1 GiB');
    expect(formatBytes(1023.9 * 1024)).toBe('1 MiB');
  });
});
