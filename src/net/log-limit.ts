// A rate limit for log lines that an outsider can trigger at will (refused connections before a
// peer is identified): up to `burst` lines per interval pass, the rest are counted and reported
// in one line when the next interval opens (DESIGN.md: every repeated log line a rate limit).
import { systemClock, type Clock } from './clock.js';
import type { LinkLogger } from './link.js';

export function rateLimitedLogger(base: LinkLogger, what: string, intervalMs = 10_000, burst = 20, clock: Clock = systemClock): LinkLogger {
  let windowStart = -Infinity;
  let passed = 0;
  let suppressed = 0;
  const gate = (): boolean => {
    const now = clock.nowMs();
    if (now - windowStart >= intervalMs) {
      if (suppressed > 0) base.warn({ suppressed, intervalMs }, `${suppressed} more ${what} in the last ${Math.round((now - windowStart) / 1000)} s (not logged one by one)`);
      windowStart = now;
      passed = 0;
      suppressed = 0;
    }
    if (passed < burst) {
      passed++;
      return true;
    }
    suppressed++;
    return false;
  };
  return {
    info: (o, m) => {
      if (gate()) base.info(o, m);
    },
    warn: (o, m) => {
      if (gate()) base.warn(o, m);
    },
  };
}
