// Role authorisation at the edge (issue 17 item 3): who may send a site which message, from the
// cluster file alone. A link's certificate says which site the peer is; the cluster file says
// whether that site is this site's upstream (the primary or standby that lists it, the relay
// that forwards to it), its downstream (the reverse), or neither; the wire protocol says which
// way each message flows (src/wire/frames.ts messageFlow). A frame against its flow is refused
// here, before the core reads it, with a reason naming the peer, the message and the fix.
//
// What the file cannot say stays with the core (src/core/upstream.ts, fanout.ts): the current
// epoch, which upstream the site joined, ranges and sessions. A frame this check lets through
// may still be refused there; one it refuses could never have been accepted there (an EPOCH
// from a site outside `upstreamsOf` is refused by the core too, so no data of it can apply).
import type { ClusterConfig } from './config.js';
import { messageFlow, type FrameTypeName } from '../wire/index.js';

/**
 * The sites the cluster file allows to be `name`'s upstream: a primary or standby that lists it
 * (a promoted standby fans out to its old primary too), a relay that forwards to it.
 * The same relation as src/site/replica.ts upstreamsOf (which feeds the core's EPOCH check);
 * test/site/authority.test.ts checks the two agree on every shipped cluster file.
 */
export function upstreamsOf(config: ClusterConfig, name: string): string[] {
  return Object.values(config.sites).filter((s) =>
    ((s.role === 'primary' || s.role === 'standby') && (s.mirrors.includes(name) || s.standby === name || s.standbyFor === name))
    || (s.role === 'relay' && s.forward === name)).map((s) => s.name);
}

export class PeerAuthority {
  private readonly upstreams: ReadonlySet<string>;
  private readonly downstreams: ReadonlySet<string>;

  constructor(
    private readonly config: ClusterConfig,
    private readonly self: string,
  ) {
    this.upstreams = new Set(upstreamsOf(config, self));
    this.downstreams = new Set(config.siteNames.filter((n) => n !== self && upstreamsOf(config, n).includes(self)));
  }

  /** Why `peer` may not send `type` to this site (undefined: it may, as far as the cluster file goes). */
  refusal(peer: string, type: FrameTypeName): string | undefined {
    const flow = messageFlow[type];
    const up = this.upstreams.has(peer);
    const down = this.downstreams.has(peer);
    if (flow === 'any' || (flow === 'down' && up) || (flow === 'up' && down) || (flow === 'both' && (up || down))) return undefined;
    const is = up ? `${peer} is an upstream of ${this.self}` : down ? `${peer} is a downstream of ${this.self}` : `${peer} neither sends writes to ${this.self} nor receives them from it`;
    const want = flow === 'down'
      ? `only ${this.list(this.upstreams)} (its upstream${this.upstreams.size === 1 ? '' : 's'} in ${this.config.file}) may`
      : flow === 'up'
        ? `only ${this.list(this.downstreams)} (its downstream${this.downstreams.size === 1 ? '' : 's'} in ${this.config.file}) may`
        : `only a site that sends writes to ${this.self} or receives them from it may`;
    return `${peer} sent ${type}, which ${want} send to ${this.self}; ${is} (check the roles, mirrors and forward of both sites in the cluster file)`;
  }

  private list(names: ReadonlySet<string>): string {
    return names.size === 0 ? 'no site' : [...names].join(', ');
  }
}
