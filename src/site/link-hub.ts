// One replication port for every consistency group of a site (issue 20 item 1: sites share
// their links' port, TLS identity and process across volumes). Each group runs its own
// Replica with its own Peers (src/site/peers.ts), and each group's stream travels on its own
// authenticated connection (HELLO names the group, src/wire/handshake.ts): a group's life can end
// and restart (a failover) without disturbing the others' streams, and one group's backlog
// never queues behind another's in a shared socket buffer. The hub owns the one LinkServer and
// hands each established link to the Peers of the group it carries; a link for a group that
// is between lives is closed (its dialer redials with backoff).
import { LinkServer, type Link, type LinkServerOptions } from '../net/index.js';
import { ErrorCode, type VolumeGeometry } from '../wire/index.js';

export class LinkHub {
  private server: LinkServer | undefined;
  private readonly handlers = new Map<number, (link: Link) => void>();
  private readonly heartbeats = new Map<number, () => { epoch: bigint; lastSeq: bigint }>();
  private refusedHandler: ((r: { code: number | undefined }) => void) | undefined;

  constructor(
    private readonly options: Omit<LinkServerOptions, 'geometryOf' | 'groupCount'>,
    private readonly geometries: ReadonlyMap<number, VolumeGeometry>,
  ) {}

  /** Binds the port once (later calls share it). */
  async listen(): Promise<void> {
    if (this.server !== undefined) return;
    const server = new LinkServer({
      ...this.options,
      geometryOf: (g) => this.geometries.get(g),
      groupCount: this.geometries.size,
      // Every HEARTBEAT, the first included, carries the epoch of the group its link carries.
      heartbeatStateOf: (g) => this.heartbeats.get(g)?.() ?? { epoch: 0n, lastSeq: 0n },
    });
    server.on('link', (link) => {
      const h = this.handlers.get(link.group);
      if (h === undefined) link.close(ErrorCode.SHUTDOWN, `consistency group ${link.group} of site '${this.options.site}' is restarting (a role change); redial`);
      else h(link);
    });
    server.on('refused', (r) => this.refusedHandler?.(r));
    await server.listen();
    this.server = server;
  }

  /** The Peers of `group` takes its links from now on; `heartbeat`: the group's epoch and last seq for its links' HEARTBEATs. */
  register(group: number, onLink: (link: Link) => void, heartbeat: () => { epoch: bigint; lastSeq: bigint }): void {
    this.handlers.set(group, onLink);
    this.heartbeats.set(group, heartbeat);
  }

  unregister(group: number, onLink: (link: Link) => void): void {
    if (this.handlers.get(group) !== onLink) return;
    this.handlers.delete(group);
    this.heartbeats.delete(group);
  }

  onRefused(fn: (r: { code: number | undefined }) => void): void {
    this.refusedHandler = fn;
  }

  async close(): Promise<void> {
    await this.server?.close();
    this.server = undefined;
  }
}
