// An NbdExport over one HAL BlockDevice: what a single site serves before replication is wired
// in (and what bench/nbd.ts and the interop tests serve over a loopback file). Byte ranges from
// the server are block-aligned (NbdExport contract), so each call is one device call.
//
// FUA: a device without native FUA but with flush gets write-then-flush, so SEND_FUA can be
// advertised whenever durability can be promised at all. Multi-conn: one device behind every
// connection and no cache in between, so flush/FUA effects are visible to all connections.

import type { BlockDevice } from '../../hal/blockdev.js';
import type { NbdExport, NbdWriteOptions } from './export.js';

export interface BlockDeviceExportOptions {
  readonly name: string;
  readonly description?: string;
  /** Serve read-only even if the device is writable (a mirror's replica export). */
  readonly readOnly?: boolean;
}

export function blockDeviceExport(dev: BlockDevice, opts: BlockDeviceExportOptions): NbdExport {
  const b = dev.blockSizeBytes;
  const caps = dev.capabilities;
  const readOnly = opts.readOnly === true || caps.readOnly;
  const lba = (offsetBytes: number): number => offsetBytes / b;
  const exp: NbdExport = {
    name: opts.name,
    description: opts.description ?? '',
    sizeBytes: dev.blockCount * b,
    blockSizeBytes: b,
    preferredBlockSizeBytes: Math.max(b, 4096),
    readOnly,
    canFlush: caps.flush,
    canFua: caps.fua || caps.flush,
    // TRIM is a hint the spec lets a server ignore ("MAY discard ... but is not required to"), so a
    // device without trim (loopback: Node has no hole punching) still advertises it and drops it.
    canTrim: !readOnly,
    canFastZero: false, // the HAL has no zero-range call: zeroing costs a full write
    multiConn: true,
    read: (offsetBytes, lengthBytes) => dev.read(lba(offsetBytes), lengthBytes / b),
    async write(offsetBytes: number, data: Buffer, { fua }: NbdWriteOptions) {
      if (readOnly) throw new Error(`export '${opts.name}' is read-only`); // the server refuses first (EPERM)
      await dev.write(lba(offsetBytes), data, { fua: fua && caps.fua });
      if (fua && !caps.fua) await dev.flush();
    },
    flush: () => dev.flush(),
  };
  if (exp.canTrim) {
    const devTrim = caps.trim && dev.trim !== undefined ? dev.trim.bind(dev) : undefined;
    exp.trim = async (offsetBytes, lengthBytes, { fua }) => {
      if (devTrim === undefined) return; // nothing written, so FUA has nothing to make durable
      await devTrim(lba(offsetBytes), lengthBytes / b);
      if (fua) await dev.flush();
    };
  }
  return exp;
}
