// The primary's NBD export (claim 3: the local site's SAN): host writes go through replication
// (the Replica's host API), reads come from the primary's own storage (claim 4). FLUSH is the
// core's barrier and FUA its per-write durability, both global to the site, so their effects are
// visible to every connection: CAN_MULTI_CONN is honest here.
import { Asc, SenseKey } from '../../hal/blockdev.js';
import { Errno } from '../nbd/protocol.js';
import { NbdExportError, type NbdExport, type NbdWriteOptions, type NbdZeroOptions } from '../nbd/export.js';
import { HostIoError } from './host-api.js';
import type { Replica } from './replica.js';
import type { SiteMetrics } from './metrics.js';

/** The NBD error for a host API failure (errno from its kind and sense); anything else as it is. */
function exportError(err: unknown, what: string): unknown {
  if (err instanceof HostIoError) {
    if (err.kind === 'fenced') return new NbdExportError(Errno.EPERM, `${what}: ${err.message}`, { cause: err });
    if (err.sense?.key === SenseKey.ILLEGAL_REQUEST && err.sense.asc === Asc.LBA_OUT_OF_RANGE[0]) return new NbdExportError(Errno.ENOSPC, `${what}: ${err.message}`, { cause: err });
    return new NbdExportError(Errno.EIO, `${what}: ${err.message}`, { cause: err });
  }
  return err;
}

function mapError(err: unknown, what: string): never {
  throw exportError(err, what);
}

export function replicaExport(replica: Replica, opts: { name: string; description: string; sizeBytes: number }): NbdExport {
  const b = replica.blockSizeBytes;
  return {
    name: opts.name,
    description: opts.description,
    sizeBytes: opts.sizeBytes,
    blockSizeBytes: b,
    preferredBlockSizeBytes: Math.max(b, 4096),
    readOnly: false,
    canFlush: true,
    canFua: true,
    // TRIM is advisory (the spec lets a server ignore it); storage has no discard yet.
    canTrim: true,
    canFastZero: false,
    multiConn: true,
    read: (offsetBytes, lengthBytes) => replica.host.read(offsetBytes, lengthBytes),
    write: (offsetBytes, data, { fua }) => replica.host.write(offsetBytes, data, fua).catch((err) => mapError(err, `write at byte ${offsetBytes}`)),
    writeNow: (offsetBytes, data, { fua }, done) => replica.host.writeNow(offsetBytes, data, fua, (err) => done(err === undefined ? undefined : exportError(err, `write at byte ${offsetBytes}`))),
    flush: () => replica.host.flush().catch((err) => mapError(err, 'flush')),
    trim: async () => undefined,
  };
}

/**
 * The export with host I/O counted (issue 19 item 6): reads and read bytes served, and every
 * request answered with an error, by op. Wraps any NbdExport (the primary's replicaExport, a
 * mirror's read-only blockDeviceExport), so the NBD server stays unaware of metrics.
 */
export function meteredExport(exp: NbdExport, metrics: Pick<SiteMetrics, 'readsTotal' | 'readBytesTotal' | 'hostIoErrorsTotal'>): NbdExport {
  const failed = (op: string) => (err: unknown): never => {
    metrics.hostIoErrorsTotal.inc({ op });
    throw err;
  };
  return {
    ...exp,
    read: async (offsetBytes, lengthBytes) => {
      const data = await exp.read(offsetBytes, lengthBytes).catch(failed('read'));
      metrics.readsTotal.inc();
      metrics.readBytesTotal.inc(lengthBytes);
      return data;
    },
    write: (offsetBytes, data, o) => exp.write(offsetBytes, data, o).catch(failed('write')),
    writeNow: exp.writeNow
      ? (offsetBytes, data, o, done) =>
          exp.writeNow!(offsetBytes, data, o, (err) => {
            if (err !== undefined) metrics.hostIoErrorsTotal.inc({ op: 'write' });
            done(err);
          })
      : undefined,
    flush: () => exp.flush().catch(failed('flush')),
    ...(exp.trim ? { trim: (o: number, l: number, w: NbdWriteOptions) => exp.trim!(o, l, w).catch(failed('trim')) } : {}),
    ...(exp.zero ? { zero: (o: number, l: number, z: NbdZeroOptions) => exp.zero!(o, l, z).catch(failed('zero')) } : {}),
  };
}
