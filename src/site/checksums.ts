// Per-region checksums of a site's own storage, for `geomirror verify` (issue 8 item 2): the
// way DRBD's online verify works, sites exchange one digest per region instead of the data, so
// comparing a 1 TiB volume across a WAN costs kilobytes of traffic, not a terabyte.
//
// Served on the admin port as GET /checksums?offset=&regionBytes=&count= (read-only, like the
// rest of that port, and authenticated). The digest is keyed (HMAC-SHA256 with a key derived
// from the cluster key, src/site/admin-auth.ts checksumDigestKey): every site of the cluster
// computes the same digest of the same data, so `geomirror verify` compares them, but whoever
// reads a digest without the key learns nothing about the data (a plain SHA-256 of a 4 KiB block
// holding a 4-digit PIN gives the PIN away in 10,000 guesses, issue 17). It is SHA-256 based: a replica that differs must never look equal, and a
// 32-bit CRC lets one in 4 billion differing regions through, which over a large volume and many
// verify runs is not "never". Node's SHA-256 (OpenSSL, SHA-NI on x86 and ARMv8 crypto on a
// Pi 4/5) runs at a GB/s or more, above what a USB or SD disk reads, so the stronger digest
// costs nothing measurable here.
import { createHmac } from 'node:crypto';

/** Digest named in every answer, so a future change of algorithm cannot compare unlike digests. */
export const checksumAlgorithm = 'hmac-sha256';
/** Regions per request: bounds the answer (65 bytes per region in JSON) and the request's run time. */
export const checksumCountMax = 1024;
/** Largest region: a region is read in pieces, but one digest should cover a sane unit. */
export const checksumRegionBytesMax = 64 * 1024 * 1024;
/** Bytes one request may cover in total: about a second of disk time, so a request never stalls the admin port for long. */
export const checksumRequestBytesMax = 256 * 1024 * 1024;
/** Piece read from storage at a time: bounds memory per request whatever the region size. */
export const checksumReadBytesMax = 1024 * 1024;

export interface ChecksumRequest {
  offsetBytes: number;
  regionBytes: number;
  count: number;
  /** HMAC key of the digests (checksumDigestKey of the cluster key): equal on every site. */
  digestKey: Buffer;
}

export interface ChecksumAnswer {
  algorithm: typeof checksumAlgorithm;
  volumeBytes: number;
  offsetBytes: number;
  regionBytes: number;
  /** One hex digest per region; the last region may be shorter (clipped at the volume end). */
  checksums: string[];
}

/** What checksums are computed over: the site's DiskArray (or any block reader). */
export interface BlockReader {
  readonly blockSizeBytes: number;
  read(lba: number, blocks: number): Promise<Buffer>;
}

/** Thrown for a request the site refuses; the admin server answers 400 with the message. */
export class ChecksumRequestError extends Error {
  /** 400: the request is wrong; 503: the site cannot answer now (starting, busy, no storage). */
  constructor(
    message: string,
    readonly httpStatus: 400 | 503 = 400,
  ) {
    super(message);
    this.name = 'ChecksumRequestError';
  }
}

/** Parses and validates the query of GET /checksums against this volume (validate at the edge). */
export function parseChecksumQuery(query: URLSearchParams, volumeBytes: number, blockSizeBytes: number, digestKey: Buffer): ChecksumRequest {
  const int = (key: string): number => {
    const text = query.get(key);
    if (text === null) throw new ChecksumRequestError(`missing ?${key}=; e.g. /checksums?offset=0&regionBytes=1048576&count=16`);
    if (!/^\d+$/.test(text) || !Number.isSafeInteger(Number(text))) throw new ChecksumRequestError(`${key}=${text} is not a whole number of ${key === 'count' ? 'regions' : 'bytes'}`);
    return Number(text);
  };
  const req = { offsetBytes: int('offset'), regionBytes: int('regionBytes'), count: int('count'), digestKey };
  checkChecksumRequest(req, volumeBytes, blockSizeBytes);
  return req;
}

export function checkChecksumRequest(req: Omit<ChecksumRequest, 'digestKey'>, volumeBytes: number, blockSizeBytes: number): void {
  const { offsetBytes, regionBytes, count } = req;
  if (regionBytes === 0 || regionBytes % blockSizeBytes !== 0 || regionBytes > checksumRegionBytesMax) {
    throw new ChecksumRequestError(`regionBytes=${regionBytes} must be a multiple of the block size ${blockSizeBytes} between ${blockSizeBytes} and ${checksumRegionBytesMax}`);
  }
  if (offsetBytes % blockSizeBytes !== 0 || offsetBytes >= volumeBytes) {
    throw new ChecksumRequestError(`offset=${offsetBytes} must be a multiple of the block size ${blockSizeBytes} below the volume size ${volumeBytes}`);
  }
  if (count < 1 || count > checksumCountMax) throw new ChecksumRequestError(`count=${count} must be between 1 and ${checksumCountMax}`);
  if ('digestKey' in req && (!Buffer.isBuffer(req.digestKey) || req.digestKey.length < 16)) throw new Error('checksums: a digest key of at least 16 bytes is required (checksumDigestKey of the cluster key)');
  if (regionBytes * count > checksumRequestBytesMax) {
    throw new ChecksumRequestError(`regionBytes*count=${regionBytes * count} exceeds ${checksumRequestBytesMax} bytes per request; ask for fewer regions`);
  }
}

/**
 * Reads `count` regions from `offsetBytes` one piece at a time (never more than
 * checksumReadBytesMax in memory) and digests each. Regions past the volume end are left out;
 * the last one is clipped. Reads are sequential, so a verify takes one disk stream's worth of
 * I/O and replication writes interleave with it.
 */
export async function regionChecksums(dev: BlockReader, volumeBytes: number, req: ChecksumRequest): Promise<ChecksumAnswer> {
  checkChecksumRequest(req, volumeBytes, dev.blockSizeBytes);
  const bs = dev.blockSizeBytes;
  const checksums: string[] = [];
  for (let i = 0; i < req.count; i++) {
    const start = req.offsetBytes + i * req.regionBytes;
    if (start >= volumeBytes) break;
    const end = Math.min(volumeBytes, start + req.regionBytes);
    const h = createHmac('sha256', req.digestKey);
    for (let at = start; at < end; at += checksumReadBytesMax) {
      const n = Math.min(checksumReadBytesMax, end - at);
      h.update(await dev.read(at / bs, n / bs));
    }
    checksums.push(h.digest('hex'));
  }
  return { algorithm: checksumAlgorithm, volumeBytes, offsetBytes: req.offsetBytes, regionBytes: req.regionBytes, checksums };
}
