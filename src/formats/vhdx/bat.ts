/**
 * The block allocation table ([MS-VHDX] 2.5): one 64-bit entry per payload block,
 * with a sector bitmap entry after every `chunkRatio` payload entries.
 *
 *   bits  | field
 *   ------|---------------------------------------------------------------
 *   0-2   | state (below)
 *   3-19  | reserved
 *   20-63 | FileOffsetMB: where the block lives, in 1 MiB units
 *
 *   payload state          | value | reads as (platter)
 *   -----------------------|-------|--------------------------------------------
 *   NOT_PRESENT            | 0     | zero (no parent) / hole (differencing)
 *   UNDEFINED              | 1     | zero (the spec allows zeros)
 *   ZERO                   | 2     | zero
 *   UNMAPPED               | 3     | zero (the spec allows zeros); v0.95 files used 5
 *   FULLY_PRESENT          | 6     | data at FileOffsetMB
 *   PARTIALLY_PRESENT      | 7     | differencing only: data where the sector bitmap bit is 1, else hole
 *
 *   sector bitmap state: NOT_PRESENT 0, PRESENT 6 (differencing only). A sector
 *   bitmap block is 1 MiB and covers 2^23 logical sectors: one chunk, i.e.
 *   chunkRatio = 2^23 * logicalSectorSize / blockSize payload blocks. Bit i of
 *   byte j is sector 8j+i of the chunk.
 */

export const NOT_PRESENT = 0;
export const UNDEFINED = 1;
export const ZERO = 2;
export const UNMAPPED = 3;
export const UNMAPPED_V095 = 5;
export const FULLY_PRESENT = 6;
export const PARTIALLY_PRESENT = 7;
export const SB_PRESENT = 6;

export const SECTORS_PER_BITMAP = 2 ** 23;

export interface Geometry {
  blockSize: number;
  logicalSectorSize: number;
  chunkRatio: number;
  dataBlocks: number;
  bitmapBlocks: number;
  /** Entries the BAT must hold. */
  entries: number;
}

export function geometry(
  size: number,
  blockSize: number,
  logicalSectorSize: number,
  hasParent: boolean,
): Geometry {
  const chunkRatio = (SECTORS_PER_BITMAP * logicalSectorSize) / blockSize;
  const dataBlocks = Math.ceil(size / blockSize);
  const bitmapBlocks = Math.ceil(dataBlocks / chunkRatio);
  const entries = hasParent
    ? bitmapBlocks * (chunkRatio + 1)
    : dataBlocks + Math.floor(Math.max(0, dataBlocks - 1) / chunkRatio);
  return { blockSize, logicalSectorSize, chunkRatio, dataBlocks, bitmapBlocks, entries };
}

/** BAT index of payload block `b`. */
export function payloadIndex(g: Geometry, b: number): number {
  return b + Math.floor(b / g.chunkRatio);
}

/** BAT index of the sector bitmap of chunk `c`. */
export function bitmapIndex(g: Geometry, c: number): number {
  return c * (g.chunkRatio + 1) + g.chunkRatio;
}

/** A BAT held in memory as its on-disk bytes. */
export class Bat {
  readonly bytes: Uint8Array;
  private readonly view: DataView;
  constructor(bytes: Uint8Array) {
    this.bytes = bytes;
    this.view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  }
  get length(): number {
    return this.bytes.length / 8;
  }
  state(i: number): number {
    return this.view.getUint32(i * 8, true) & 7;
  }
  /** File offset in bytes (FileOffsetMB * 1 MiB). */
  offset(i: number): number {
    const lo = this.view.getUint32(i * 8, true);
    const hi = this.view.getUint32(i * 8 + 4, true);
    return ((lo >>> 20) + hi * 4096) * 2 ** 20;
  }
  set(i: number, state: number, offset: number): void {
    const mb = offset / 2 ** 20;
    this.view.setUint32(i * 8, (((mb % 4096) << 20) | state) >>> 0, true);
    this.view.setUint32(i * 8 + 4, Math.floor(mb / 4096), true);
  }
}
