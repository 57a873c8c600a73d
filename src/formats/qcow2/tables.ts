/**
 * L1 and L2 tables (qcow2.txt, "Cluster mapping"). Entries are big-endian
 * u64; they are handled as two u32 halves so no BigInt is needed per cluster.
 *
 *   L1 entry   bits 9-55  offset of an L2 table (0 = all its clusters unallocated)
 *              bit 63     refcount is exactly 1 ("copied")
 *   L2 entry   bit 62     compressed (see compressed.ts)
 *              bit 63     refcount is exactly 1 (standard clusters only)
 *              bits 9-55  host cluster offset (standard)
 *              bit 0      reads as zeros (v3); with offset 0: "zero, unallocated"
 *
 *   what the entry says                      extents() status
 *   offset 0, bit 0 clear, not compressed    hole (read from the backing)
 *   bit 0 set (any offset)                   zero
 *   standard with offset                     data
 *   compressed                               data
 */
import { corrupt } from '../../core/errors.js';

export const COPIED_HI = 0x80000000;
export const COMPRESSED_HI = 0x40000000;

export type L2Kind = 'hole' | 'zero' | 'data' | 'compressed';

export interface L2Entry {
  kind: L2Kind;
  /** Host offset of a standard cluster (also of a preallocated zero cluster), else 0. */
  offset: number;
  copied: boolean;
  hi: number;
  lo: number;
}

export function readHiLo(table: Uint8Array, i: number): [number, number] {
  const at = i * 8;
  const hi = ((table[at] << 24) | (table[at + 1] << 16) | (table[at + 2] << 8) | table[at + 3]) >>> 0;
  const lo = ((table[at + 4] << 24) | (table[at + 5] << 16) | (table[at + 6] << 8) | table[at + 7]) >>> 0;
  return [hi, lo];
}

export function writeHiLo(table: Uint8Array, i: number, hi: number, lo: number): void {
  const at = i * 8;
  table[at] = hi >>> 24;
  table[at + 1] = (hi >>> 16) & 0xff;
  table[at + 2] = (hi >>> 8) & 0xff;
  table[at + 3] = hi & 0xff;
  table[at + 4] = lo >>> 24;
  table[at + 5] = (lo >>> 16) & 0xff;
  table[at + 6] = (lo >>> 8) & 0xff;
  table[at + 7] = lo & 0xff;
}

/** The offset field (bits 9-55) of an L1/L2/refcount-table style entry. */
export function offsetOf(hi: number, lo: number): number {
  return (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
}

/** Encodes a standard entry (offset, flags) to [hi, lo]. */
export function standardEntry(offset: number, copied: boolean, zero = false): [number, number] {
  const hi = (Math.floor(offset / 2 ** 32) | (copied ? COPIED_HI : 0)) >>> 0;
  const lo = ((offset % 2 ** 32) | (zero ? 1 : 0)) >>> 0;
  return [hi, lo];
}

/**
 * Writes standard entries [i, i+n) of a table for n clusters side by side on
 * the host from `offset` (copied flag set): a run of new data clusters. The
 * first entry from the offset, each next one by adding the cluster size to the
 * previous entry's bytes: in code V8 has not optimised, every u32 above 2^30
 * computed per entry would be a heap number to collect.
 */
export function writeStandardRun(table: Uint8Array, i: number, n: number, offset: number, cs: number): void {
  if (n <= 0) return;
  const [hi, lo] = standardEntry(offset, true);
  writeHiLo(table, i, hi, lo);
  // cs = 2^bits adds 2^(bits % 8) to byte 7 - floor(bits / 8) of the big-endian entry.
  const bits = Math.log2(cs);
  const byte = 7 - Math.floor(bits / 8);
  const step = 1 << (bits % 8);
  for (let k = 1; k < n; k++) {
    const at = (i + k) * 8;
    table.copyWithin(at, at - 8, at);
    let j = at + byte;
    let v = table[j] + step;
    table[j] = v & 0xff;
    while (v > 0xff) {
      j--;
      v = table[j] + 1;
      table[j] = v & 0xff;
    }
  }
}

/** Decodes and checks an L2 entry (alignment; the caller checks the file end). */
export function decodeL2(hi: number, lo: number, v3: boolean, cs: number, file: string): L2Entry {
  if (hi & COMPRESSED_HI) return { kind: 'compressed', offset: 0, copied: false, hi, lo };
  const offset = offsetOf(hi, lo);
  const copied = (hi & COPIED_HI) !== 0;
  if (v3 && lo & 1) return { kind: 'zero', offset, copied, hi, lo };
  if (offset === 0) return { kind: 'hole', offset: 0, copied, hi, lo };
  if (offset % cs !== 0) {
    throw corrupt(
      file,
      `data cluster offset 0x${offset.toString(16)} is not aligned to the cluster size ${cs}`,
    );
  }
  return { kind: 'data', offset, copied, hi, lo };
}

/** Offset of the L2 table from an L1 entry, checked. 0 = none. */
export function l2OffsetOf(
  hi: number,
  lo: number,
  cs: number,
  fileSize: number,
  file: string,
  index: number,
): number {
  const offset = offsetOf(hi, lo);
  if (offset === 0) return 0;
  if (offset % cs !== 0) {
    throw corrupt(
      file,
      `L2 table offset 0x${offset.toString(16)} (L1 entry ${index}) is not aligned to the cluster size ${cs}`,
    );
  }
  if (offset + cs > fileSize) {
    throw corrupt(
      file,
      `L2 table offset 0x${offset.toString(16)} (L1 entry ${index}) is past end of file (size ${fileSize})`,
    );
  }
  return offset;
}
