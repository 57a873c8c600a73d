/**
 * The sparse extent header (hosted sparse extent, "KDMV", 512 bytes, little
 * endian) and the stream-optimized markers.
 *
 *   off size field
 *   0   4    magicNumber 'KDMV'
 *   4   4    version (1; 2 with zeroed-grain GTEs; 3 for streamOptimized)
 *   8   4    flags (see FLAG_*)
 *   12  8    capacity (sectors)
 *   20  8    grainSize (sectors)
 *   28  8    descriptorOffset (sectors; 0 = none)
 *   36  8    descriptorSize (sectors)
 *   44  4    numGTEsPerGT (512)
 *   48  8    rgdOffset (sectors; redundant grain directory)
 *   56  8    gdOffset (sectors; GD_AT_END = read the footer)
 *   64  8    overHead (sectors before the first grain)
 *   72  1    uncleanShutdown
 *   73  4    '\n' ' ' '\r' '\n' (detects text-mode transfer corruption)
 *   77  2    compressAlgorithm (1 = deflate)
 *
 * Markers (streamOptimized, one sector each, then the metadata they announce):
 *   u64 val (sectors of metadata, or the grain's LBA), u32 size (compressed
 *   grain length; 0 for a metadata marker), u32 type (EOS 0, GT 1, GD 2, footer 3).
 * A compressed grain is {u64 lba, u32 size, data[size]} padded to a sector.
 * A streamOptimized file ends with: footer marker, footer (a header copy with
 * the real gdOffset), end-of-stream marker — exactly the last 1536 bytes.
 */

import { u64, viewOf } from '../../core/bytes.js';
import { corrupt } from '../../core/errors.js';

export const SECTOR = 512;
export const MAGIC = 0x564d444b; // 'KDMV' read little-endian
export const COWD_MAGIC = 0x44574f43; // 'COWD': VMware 3 / vmfsSparse

export const FLAG_NL_DETECT = 1 << 0;
export const FLAG_RGD = 1 << 1;
export const FLAG_ZERO_GRAIN = 1 << 2;
export const FLAG_COMPRESSED = 1 << 16;
export const FLAG_MARKERS = 1 << 17;

export const COMPRESS_DEFLATE = 1;
export const GD_AT_END = 0xffffffffffffffffn;

export const MARKER_EOS = 0;
export const MARKER_GT = 1;
export const MARKER_GD = 2;
export const MARKER_FOOTER = 3;

/** GTE value for a grain that reads as zeros (with FLAG_ZERO_GRAIN). */
export const GTE_ZEROED = 1;

export interface SparseHeader {
  version: number;
  flags: number;
  capacitySectors: number;
  grainSectors: number;
  descriptorOffsetSectors: number;
  descriptorSizeSectors: number;
  numGTEsPerGT: number;
  rgdOffsetSectors: number;
  /** -1 when the header says GD_AT_END. */
  gdOffsetSectors: number;
  overHeadSectors: number;
  uncleanShutdown: number;
  compressAlgorithm: number;
}

export function parseHeader(buf: Uint8Array, file: string): SparseHeader {
  const v = viewOf(buf);
  if (v.getUint32(0, true) !== MAGIC) throw corrupt(file, 'sparse extent header magic is not KDMV');
  const gdRaw = v.getBigUint64(56, true);
  return {
    version: v.getUint32(4, true),
    flags: v.getUint32(8, true),
    capacitySectors: u64(v, 12, true, 'capacity', file),
    grainSectors: u64(v, 20, true, 'grainSize', file),
    descriptorOffsetSectors: u64(v, 28, true, 'descriptorOffset', file),
    descriptorSizeSectors: u64(v, 36, true, 'descriptorSize', file),
    numGTEsPerGT: v.getUint32(44, true),
    rgdOffsetSectors: u64(v, 48, true, 'rgdOffset', file),
    gdOffsetSectors: gdRaw === GD_AT_END ? -1 : u64(v, 56, true, 'gdOffset', file),
    overHeadSectors: u64(v, 64, true, 'overHead', file),
    uncleanShutdown: v.getUint8(72),
    compressAlgorithm: v.getUint16(77, true),
  };
}

export function serializeHeader(h: SparseHeader): Uint8Array {
  const buf = new Uint8Array(SECTOR);
  const v = viewOf(buf);
  v.setUint32(0, MAGIC, true);
  v.setUint32(4, h.version, true);
  v.setUint32(8, h.flags, true);
  v.setBigUint64(12, BigInt(h.capacitySectors), true);
  v.setBigUint64(20, BigInt(h.grainSectors), true);
  v.setBigUint64(28, BigInt(h.descriptorOffsetSectors), true);
  v.setBigUint64(36, BigInt(h.descriptorSizeSectors), true);
  v.setUint32(44, h.numGTEsPerGT, true);
  v.setBigUint64(48, BigInt(h.rgdOffsetSectors), true);
  v.setBigUint64(56, h.gdOffsetSectors < 0 ? GD_AT_END : BigInt(h.gdOffsetSectors), true);
  v.setBigUint64(64, BigInt(h.overHeadSectors), true);
  v.setUint8(72, h.uncleanShutdown);
  buf.set([0x0a, 0x20, 0x0d, 0x0a], 73);
  v.setUint16(77, h.compressAlgorithm, true);
  return buf;
}

/** A metadata marker sector (GT, GD, footer, EOS). */
export function metadataMarker(type: number, sectors: number): Uint8Array {
  const buf = new Uint8Array(SECTOR);
  const v = viewOf(buf);
  v.setBigUint64(0, BigInt(sectors), true);
  v.setUint32(8, 0, true);
  v.setUint32(12, type, true);
  return buf;
}

export interface Marker {
  val: number;
  size: number;
  type: number;
}

export function parseMarker(buf: Uint8Array, file: string): Marker {
  const v = viewOf(buf);
  return {
    val: u64(v, 0, true, 'marker value', file),
    size: v.getUint32(8, true),
    type: v.getUint32(12, true),
  };
}
