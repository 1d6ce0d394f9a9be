// Volume geometry checks shared by the adapters: validate once at the edge (STYLE rule 3) so
// that an adapter never runs with a block size or block count it cannot address.
//
// hal/ imports nothing from src/.

import { blockSizesBytes, sense, type BlockSizeBytes } from './blockdev.js';

/**
 * Largest volume a single adapter may expose, in blocks. LBAs travel as JS numbers, so the byte
 * offset `lba * blockSizeBytes` must stay a safe integer for the largest block size.
 */
export const blockCountMax = Math.floor(Number.MAX_SAFE_INTEGER / 4096);

export interface Geometry {
  readonly blockSizeBytes: BlockSizeBytes;
  readonly blockCount: number;
}

/** Throws ILLEGAL REQUEST naming the device if the geometry is not one we can serve. */
export function checkGeometry(device: string, blockSizeBytes: number, blockCount: number): Geometry {
  if (!(blockSizesBytes as readonly number[]).includes(blockSizeBytes)) {
    throw sense.invalidField(device, `block size ${blockSizeBytes} is not supported; use one of ${blockSizesBytes.join(', ')} bytes`);
  }
  if (!Number.isSafeInteger(blockCount) || blockCount <= 0 || blockCount > blockCountMax) {
    throw sense.invalidField(device, `block count ${blockCount} is not valid; use a whole number from 1 to ${blockCountMax}`);
  }
  return { blockSizeBytes: blockSizeBytes as BlockSizeBytes, blockCount };
}
