// Small pieces every site runtime (replica, witness) does with a link: decode a frame into a
// core message or close the link naming why, send a frame or close the link naming why, and
// answer STATUS_REQUEST from a SiteStatus. One place, so every role refuses the same way.
import type { PeerMsg } from '../core/types.js';
import type { Link } from '../net/index.js';
import { ErrorCode, type DataMessage } from '../wire/index.js';
import { coordinatorStatusEntries } from './coordinator.js';
import { fromWire } from './peerwire.js';
import type { SiteStatus } from './status.js';

/**
 * The core message in `m`; undefined when it is not one, or when it was refused: a field no
 * volume of this cluster can have (fromWire throws, naming the peer), logged here and the link
 * closed with REFUSED.
 */
export function decodeOrClose(link: Link, m: DataMessage, peer: string, log?: { warn(o: object, msg: string): void }): PeerMsg | undefined {
  try {
    return fromWire(m, peer, link.group);
  } catch (err) {
    const reason = (err as Error).message;
    log?.warn({ event: 'frame-refused', peer, remote: link.remote, type: m.type, reason }, `refused ${m.type} from ${peer}: ${reason}`);
    link.close(ErrorCode.REFUSED, reason);
    return undefined;
  }
}

/** Sends `frame`; a link that cannot take it (queue or window full, closed) is closed with the reason. */
export function sendOrClose(link: Link, frame: DataMessage): boolean {
  try {
    link.send(frame);
    return true;
  } catch (err) {
    link.close(undefined, (err as Error).message);
    return false;
  }
}

/** STATUS_REPLY entries (what `npm run conformance` and peers ask any site). */
export function statusReplyEntries(st: SiteStatus): [string, string][] {
  return [
    ['site', st.site], ['role', st.role], ['epoch', String(st.epoch)], ['lastSeqAcked', st.lastSeqAcked],
    ['state', st.state], ['cacheEntries', String(st.cache.entries)],
    // With an etcd coordinator: whether this site reaches etcd (its primary asks while its own lease is at risk).
    ...coordinatorStatusEntries(st.coordinator, st.epoch, st.standby?.phase),
  ];
}
