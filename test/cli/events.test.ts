// geomirror events, the command side: lines from the network are checked before printing, and
// human lines carry time, site and what changed. (The stream itself: test/e2e/events.test.ts.)
import { describe, expect, it } from 'vitest';
import { formatEvent, parseEventLine } from '../../src/cli/events.js';
import type { SiteEvent } from '../../src/site/events.js';

const ev: SiteEvent = { seq: 3, at: '2026-12-07T02:00:01.250Z', type: 'change', site: 'local', what: 'link', peer: 'east', from: 'up', to: 'connecting', text: 'link to east down (connecting)' };

describe('geomirror events output', () => {
  it('prints time, site and the change; exists lines are marked', () => {
    expect(formatEvent(ev, 6)).toBe('02:00:01.250 local   link to east down (connecting)');
    expect(formatEvent({ ...ev, type: 'exists', text: 'mirror east: link up, in-sync' })).toBe('02:00:01.250 local  exists: mirror east: link up, in-sync');
    expect(formatEvent({ ...ev, text: 'evil\n\u001b[2Jtext' })).toBe('02:00:01.250 local  evil [2Jtext');
  });

  it('checks every line before trusting it', () => {
    expect(parseEventLine(JSON.stringify(ev), 'x')).toEqual(ev);
    expect(() => parseEventLine('not json', '127.0.0.1:9')).toThrow('127.0.0.1:9: /events sent a line that is not JSON');
    expect(() => parseEventLine(JSON.stringify({ ...ev, what: 'rm -rf' }), 'x')).toThrow(/not a geomirror event/);
    expect(() => parseEventLine(JSON.stringify({ ...ev, site: 7 }), 'x')).toThrow(/not a geomirror event/);
    expect(() => parseEventLine('null', 'x')).toThrow(/not a geomirror event/);
  });
});
