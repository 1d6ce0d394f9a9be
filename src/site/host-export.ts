// The primary's NBD export (claim 3: the local site's SAN): host writes go through replication
// (the Replica's host API), reads come from the primary's own storage (claim 4). FLUSH is the
// core's barrier and FUA its per-write durability, both global to the site, so their effects are
// visible to every connection: CAN_MULTI_CONN is honest here.
import { Asc, SenseKey } from '../../hal/blockdev.js';
import { Errno } from '../nbd/protocol.js';
import { NbdExportError, type NbdExport } from '../nbd/export.js';
import { HostIoError } from './host-api.js';
import type { Replica } from './replica.js';

function mapError(err: unknown, what: string): never {
  if (err instanceof HostIoError) {
    if (err.kind === 'fenced') throw new NbdExportError(Errno.EPERM, `${what}: ${err.message}`, { cause: err });
    if (err.sense?.key === SenseKey.ILLEGAL_REQUEST && err.sense.asc === Asc.LBA_OUT_OF_RANGE[0]) throw new NbdExportError(Errno.ENOSPC, `${what}: ${err.message}`, { cause: err });
    throw new NbdExportError(Errno.EIO, `${what}: ${err.message}`, { cause: err });
  }
  throw err;
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
    flush: () => replica.host.flush().catch((err) => mapError(err, 'flush')),
    trim: async () => undefined,
  };
}
