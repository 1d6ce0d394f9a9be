// A block device made of other block devices back to back (a linear concatenation, like
// Linux's dm-linear or mdadm's --level=linear): LBA 0.. of the first part, then the second
// part's, and so on. A consistency group of several volumes (issue 20) is replicated as one
// address space; at each site its RAID-1 members are such concatenations of the volumes' own
// devices, so every volume keeps its own file or disk while the group keeps one write order.
//
// An I/O that spans a boundary is split; a write spanning parts is whole only when every piece
// is (the array above retries or degrades on the error, as it does for a single device). The
// sense errors of a part name the part (its device string) and the part's LBA.
//
// hal/ imports nothing from src/.
import { blocksIn, checkRange, MediaStatus, sense, type BlockDevice, type BlockSizeBytes, type Capabilities, type MediaStatusFlags, type WriteOptions } from './blockdev.js';

interface Piece {
  part: BlockDevice;
  /** LBA within the part. */
  lba: number;
  blocks: number;
  /** Block offset of this piece within the request. */
  at: number;
}

export class ConcatDevice implements BlockDevice {
  readonly name: string;
  readonly blockSizeBytes: BlockSizeBytes;
  readonly blockCount: number;
  readonly capabilities: Capabilities;
  /** First LBA of each part. */
  private readonly starts: number[] = [];
  readonly writeNow?: (lba: number, data: Uint8Array) => void;
  private closed = false;

  constructor(
    readonly parts: readonly BlockDevice[],
    name?: string,
  ) {
    if (parts.length === 0) throw new Error('ConcatDevice: needs at least one part');
    const bs = parts[0]!.blockSizeBytes;
    const odd = parts.find((p) => p.blockSizeBytes !== bs);
    if (odd !== undefined) throw sense.invalidField(odd.name, `block size ${odd.blockSizeBytes} differs from ${parts[0]!.name}'s ${bs}; the parts of one concatenation share a block size`);
    this.blockSizeBytes = bs;
    let n = 0;
    for (const p of parts) {
      this.starts.push(n);
      n += p.blockCount;
    }
    this.blockCount = n;
    this.name = name ?? `concat(${parts.map((p) => p.name).join(' + ')})`;
    this.capabilities = {
      flush: parts.every((p) => p.capabilities.flush),
      fua: parts.every((p) => p.capabilities.fua),
      trim: parts.every((p) => p.capabilities.trim && p.trim !== undefined),
      readOnly: parts.some((p) => p.capabilities.readOnly),
    };
    if (parts.every((p) => p.writeNow !== undefined)) {
      this.writeNow = (lba, data) => {
        this.writable(lba);
        for (const pc of this.pieces(lba, blocksIn(this, data, lba))) pc.part.writeNow!(pc.lba, this.slice(data, pc));
      };
    }
  }

  status(): MediaStatusFlags {
    let s: MediaStatusFlags = MediaStatus.OK;
    for (const p of this.parts) s |= p.status();
    return s;
  }

  async read(lba: number, blocks: number): Promise<Buffer> {
    this.open();
    const pieces = this.pieces(lba, blocks);
    if (pieces.length === 1) return pieces[0]!.part.read(pieces[0]!.lba, pieces[0]!.blocks);
    return Buffer.concat(await Promise.all(pieces.map((pc) => pc.part.read(pc.lba, pc.blocks))));
  }

  async write(lba: number, data: Uint8Array, options?: WriteOptions): Promise<void> {
    this.writable(lba);
    const pieces = this.pieces(lba, blocksIn(this, data, lba));
    await Promise.all(pieces.map((pc) => pc.part.write(pc.lba, this.slice(data, pc), options)));
  }

  async flush(): Promise<void> {
    this.open();
    await Promise.all(this.parts.map((p) => p.flush()));
  }

  async trim(lba: number, blocks: number): Promise<void> {
    this.writable(lba);
    await Promise.all(this.pieces(lba, blocks).map((pc) => pc.part.trim?.(pc.lba, pc.blocks)));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const results = await Promise.allSettled(this.parts.map((p) => p.close()));
    const failed = results.find((r) => r.status === 'rejected');
    if (failed !== undefined) throw (failed as PromiseRejectedResult).reason;
  }

  private open(): void {
    if (this.closed) throw sense.notPresent(this.name);
  }

  private writable(lba: number): void {
    this.open();
    if (this.capabilities.readOnly) throw sense.writeProtected(this.name, lba);
  }

  /** The request [lba, lba+blocks) cut at part boundaries (range-checked here, at the edge). */
  private pieces(lba: number, blocks: number): Piece[] {
    checkRange(this, lba, blocks);
    const out: Piece[] = [];
    let i = this.partIndex(lba);
    let at = 0;
    let cur = lba;
    while (at < blocks || (blocks === 0 && out.length === 0)) {
      const part = this.parts[i]!;
      const inPart = cur - this.starts[i]!;
      const n = Math.min(blocks - at, part.blockCount - inPart);
      out.push({ part, lba: inPart, blocks: n, at });
      if (blocks === 0) break;
      at += n;
      cur += n;
      i++;
    }
    return out;
  }

  private partIndex(lba: number): number {
    let lo = 0;
    let hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= lba) lo = mid;
      else hi = mid - 1;
    }
    // An LBA at the very end (a zero-block request there) belongs to the last part.
    while (lo < this.parts.length - 1 && lba >= this.starts[lo]! + this.parts[lo]!.blockCount) lo++;
    return lo;
  }

  private slice(data: Uint8Array, pc: Piece): Uint8Array {
    const bs = this.blockSizeBytes;
    return pc.at === 0 && pc.blocks * bs === data.byteLength ? data : data.subarray(pc.at * bs, (pc.at + pc.blocks) * bs);
  }
}
