/**
 * EWF (E01) on-disk structures, after libewf's "Expert Witness Compression
 * Format (EWF)" document. All integers little-endian.
 *
 * Segment file = 13-byte file header, then sections back to back. Each section
 * starts with a 76-byte descriptor:
 *
 *   off size field
 *   0   16   type, NUL-padded ASCII ("header2", "volume", "sectors", "table", ...)
 *   16  8    next section offset (from the start of the segment file)
 *   24  8    section size (descriptor included; 0 in EnCase "next"/"done")
 *   32  40   padding
 *   72  4    Adler-32 of bytes 0..71
 *
 * Section data this driver reads and writes:
 *   volume/disk/data (1052 bytes; 94 in the old "ewf"/SMART layout):
 *     0 media type, 4 chunk count, 8 sectors per chunk, 12 bytes per sector,
 *     16 sector count (u64; u32 in the 94-byte form), 36 media flags,
 *     52 compression level, 56 error granularity, 64 set GUID, 1048 Adler-32
 *   table/table2: 24-byte header (0 entry count, 8 base offset (EnCase 6+),
 *     20 Adler-32), entry count x u32 (MSB = compressed, rest = offset from
 *     the base), then a 4-byte Adler-32 of the entries (absent in the "ewf"
 *     layout, where the chunks follow the entries inside the table section)
 *   hash: 16 MD5, 16 unknown, 4 Adler-32      digest: 16 MD5, 20 SHA-1, 40 pad, 4 Adler-32
 *   error2: 520-byte header (0 entry count, 516 Adler-32), entries of
 *     (u32 first sector, u32 sector count), 4-byte Adler-32 of the entries
 */
import { corrupt } from '../../core/errors.js';
import { adler32 } from './adler32.js';

export const EVF_MAGIC = Uint8Array.from([0x45, 0x56, 0x46, 0x09, 0x0d, 0x0a, 0xff, 0x00]);
export const EVF2_MAGIC = Uint8Array.from([0x45, 0x56, 0x46, 0x32, 0x0d, 0x0a, 0x81, 0x00]);
export const LVF_MAGIC = Uint8Array.from([0x4c, 0x56, 0x46, 0x09, 0x0d, 0x0a, 0xff, 0x00]);
export const FILE_HEADER_SIZE = 13;
export const DESCRIPTOR_SIZE = 76;
export const VOLUME_SIZE = 1052;
export const VOLUME_SIZE_SMART = 94;
export const TABLE_HEADER_SIZE = 24;
export const HASH_SIZE = 36;
export const DIGEST_SIZE = 80;
export const ERROR2_HEADER_SIZE = 520;
/** EnCase 6 accepts more, but older readers stop at this many entries per table. */
export const MAX_TABLE_ENTRIES = 16375;
/** Largest chunk: 32768 sectors of 4096 bytes would be 128 MiB; libewf allows 32768 x 512. */
export const MAX_CHUNK_SIZE = 32768 * 512;

const dv = (b: Uint8Array): DataView => new DataView(b.buffer, b.byteOffset, b.byteLength);

function checkSum(file: string, what: string, body: Uint8Array, stored: number): void {
  const got = adler32(body);
  if (got !== stored) {
    throw corrupt(
      file,
      `${what}: Adler-32 checksum 0x${stored.toString(16).padStart(8, '0')} does not match the data (0x${got.toString(16).padStart(8, '0')})`,
    );
  }
}

// --- file header -------------------------------------------------------------

export function parseFileHeader(file: string, b: Uint8Array): number {
  if (b.length < FILE_HEADER_SIZE || !EVF_MAGIC.every((x, i) => b[i] === x)) {
    throw corrupt(file, 'file header: not an EWF (EVF) segment file signature');
  }
  const v = dv(b);
  if (b[8] !== 1) throw corrupt(file, `file header: start-of-fields byte is ${b[8]}, expected 1`);
  return v.getUint16(9, true);
}

export function fileHeader(segment: number): Uint8Array {
  const b = new Uint8Array(FILE_HEADER_SIZE);
  b.set(EVF_MAGIC);
  b[8] = 1;
  dv(b).setUint16(9, segment, true);
  return b;
}

// --- section descriptor -----------------------------------------------------

export interface Descriptor {
  type: string;
  /** Where this descriptor is in its segment file. */
  offset: number;
  next: number;
  size: number;
}

export function parseDescriptor(file: string, b: Uint8Array, offset: number): Descriptor {
  const v = dv(b);
  checkSum(file, `section descriptor at offset ${offset}`, b.subarray(0, 72), v.getUint32(72, true));
  let end = 0;
  while (end < 16 && b[end] !== 0) end++;
  const type = String.fromCharCode(...b.subarray(0, end));
  const next = v.getBigUint64(16, true);
  const size = v.getBigUint64(24, true);
  const lim = BigInt(Number.MAX_SAFE_INTEGER);
  if (next > lim)
    throw corrupt(
      file,
      `section '${type}' at offset ${offset}: next offset 0x${next.toString(16)} is too large`,
    );
  if (size > lim)
    throw corrupt(file, `section '${type}' at offset ${offset}: size 0x${size.toString(16)} is too large`);
  return { type, offset, next: Number(next), size: Number(size) };
}

export function descriptor(type: string, next: number, size: number): Uint8Array {
  const b = new Uint8Array(DESCRIPTOR_SIZE);
  for (let i = 0; i < type.length; i++) b[i] = type.charCodeAt(i);
  const v = dv(b);
  v.setBigUint64(16, BigInt(next), true);
  v.setBigUint64(24, BigInt(size), true);
  v.setUint32(72, adler32(b.subarray(0, 72)), true);
  return b;
}

// --- volume / disk / data ----------------------------------------------------

export interface Volume {
  mediaType: number;
  chunkCount: number;
  sectorsPerChunk: number;
  bytesPerSector: number;
  sectorCount: number;
  mediaFlags: number;
  /** 0 none, 1 fast ("good"), 2 best; absent in the 94-byte layout. */
  compressionLevel?: number;
  errorGranularity?: number;
  guid?: string;
  /** 94 (SMART/"ewf") or 1052 (EnCase). */
  layoutSize: number;
}

export function parseVolume(file: string, b: Uint8Array, what: string): Volume {
  const v = dv(b);
  let vol: Volume;
  if (b.length >= VOLUME_SIZE) {
    checkSum(file, what, b.subarray(0, 1048), v.getUint32(1048, true));
    const sc = v.getBigUint64(16, true);
    if (sc > BigInt(Number.MAX_SAFE_INTEGER))
      throw corrupt(file, `${what}: sector count 0x${sc.toString(16)} is too large`);
    const g = b.subarray(64, 80);
    vol = {
      mediaType: b[0],
      chunkCount: v.getUint32(4, true),
      sectorsPerChunk: v.getUint32(8, true),
      bytesPerSector: v.getUint32(12, true),
      sectorCount: Number(sc),
      mediaFlags: b[36],
      compressionLevel: b[52],
      errorGranularity: v.getUint32(56, true),
      guid: g.every((x) => x === 0) ? undefined : guidText(g),
      layoutSize: VOLUME_SIZE,
    };
  } else if (b.length >= VOLUME_SIZE_SMART) {
    checkSum(file, what, b.subarray(0, 90), v.getUint32(90, true));
    vol = {
      mediaType: 1,
      chunkCount: v.getUint32(4, true),
      sectorsPerChunk: v.getUint32(8, true),
      bytesPerSector: v.getUint32(12, true),
      sectorCount: v.getUint32(16, true),
      mediaFlags: 1,
      layoutSize: VOLUME_SIZE_SMART,
    };
  } else {
    throw corrupt(
      file,
      `${what}: ${b.length} bytes is too short (a volume section holds ${VOLUME_SIZE_SMART} or ${VOLUME_SIZE})`,
    );
  }
  const bps = vol.bytesPerSector;
  if (bps < 1 || bps > 65536) throw corrupt(file, `${what}: bytes per sector ${bps} is outside 1..65536`);
  const spc = vol.sectorsPerChunk;
  if (spc < 1 || spc * bps > MAX_CHUNK_SIZE) {
    throw corrupt(
      file,
      `${what}: chunk of ${spc} sectors x ${bps} bytes is outside 1..${MAX_CHUNK_SIZE} bytes`,
    );
  }
  if (vol.sectorCount * bps > Number.MAX_SAFE_INTEGER) {
    throw corrupt(file, `${what}: media size ${vol.sectorCount} x ${bps} bytes is too large`);
  }
  return vol;
}

function guidText(g: Uint8Array): string {
  const h = Buffer.from(g).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

export function volume(v: Omit<Volume, 'layoutSize' | 'guid'> & { guid: Uint8Array }): Uint8Array {
  const b = new Uint8Array(VOLUME_SIZE);
  const w = dv(b);
  b[0] = v.mediaType;
  w.setUint32(4, v.chunkCount, true);
  w.setUint32(8, v.sectorsPerChunk, true);
  w.setUint32(12, v.bytesPerSector, true);
  w.setBigUint64(16, BigInt(v.sectorCount), true);
  b[36] = v.mediaFlags;
  b[52] = v.compressionLevel ?? 0;
  w.setUint32(56, v.errorGranularity ?? v.sectorsPerChunk, true);
  b.set(v.guid.subarray(0, 16), 64);
  w.setUint32(1048, adler32(b.subarray(0, 1048)), true);
  return b;
}

// --- table / table2 ----------------------------------------------------------

export interface Table {
  base: number;
  /** Raw entries: bit 31 = compressed, bits 0..30 = offset from base. */
  entries: Uint32Array;
  /** Whether the 4-byte checksum of the entries follows them. */
  hasFooter: boolean;
}

/**
 * `data` is the section without its descriptor. `footerRequired`: EnCase
 * layouts (chunks in a separate sectors section) always have the entries'
 * checksum; the old "ewf" layout (chunks inside the table section) has none.
 */
export function parseTable(file: string, data: Uint8Array, what: string, footerRequired: boolean): Table {
  if (data.length < TABLE_HEADER_SIZE)
    throw corrupt(file, `${what}: ${data.length} bytes is too short for a table header`);
  const v = dv(data);
  checkSum(file, `${what} header`, data.subarray(0, 20), v.getUint32(20, true));
  const count = v.getUint32(0, true);
  const base = v.getBigUint64(8, true);
  if (base > BigInt(Number.MAX_SAFE_INTEGER))
    throw corrupt(file, `${what}: base offset 0x${base.toString(16)} is too large`);
  const need = TABLE_HEADER_SIZE + 4 * count;
  if (need > data.length) {
    throw corrupt(file, `${what}: ${count} entries need ${need} bytes but the section holds ${data.length}`);
  }
  const raw = data.subarray(TABLE_HEADER_SIZE, need);
  const entries = new Uint32Array(count);
  for (let i = 0; i < count; i++) entries[i] = v.getUint32(TABLE_HEADER_SIZE + 4 * i, true);
  let hasFooter = false;
  if (need + 4 <= data.length) {
    const stored = v.getUint32(need, true);
    if (stored === adler32(raw)) hasFooter = true;
    else if (footerRequired) checkSum(file, `${what} entries`, raw, stored);
  } else if (footerRequired) {
    throw corrupt(file, `${what}: the checksum after ${count} entries is missing`);
  }
  return { base: Number(base), entries, hasFooter };
}

export function table(base: number, entries: Uint32Array): Uint8Array {
  const b = new Uint8Array(TABLE_HEADER_SIZE + 4 * entries.length + 4);
  const v = dv(b);
  v.setUint32(0, entries.length, true);
  v.setBigUint64(8, BigInt(base), true);
  v.setUint32(20, adler32(b.subarray(0, 20)), true);
  for (let i = 0; i < entries.length; i++) v.setUint32(TABLE_HEADER_SIZE + 4 * i, entries[i], true);
  const end = TABLE_HEADER_SIZE + 4 * entries.length;
  v.setUint32(end, adler32(b.subarray(TABLE_HEADER_SIZE, end)), true);
  return b;
}

// --- hash / digest -----------------------------------------------------------

const hex = (b: Uint8Array): string => Buffer.from(b).toString('hex');
const isZero = (b: Uint8Array): boolean => b.every((x) => x === 0);

export function parseHash(file: string, b: Uint8Array): { md5?: string } {
  if (b.length < HASH_SIZE)
    throw corrupt(file, `hash section: ${b.length} bytes is too short (need ${HASH_SIZE})`);
  checkSum(file, 'hash section', b.subarray(0, 32), dv(b).getUint32(32, true));
  const md5 = b.subarray(0, 16);
  return isZero(md5) ? {} : { md5: hex(md5) };
}

export function hashSection(md5: Uint8Array): Uint8Array {
  const b = new Uint8Array(HASH_SIZE);
  b.set(md5, 0);
  dv(b).setUint32(32, adler32(b.subarray(0, 32)), true);
  return b;
}

export function parseDigest(file: string, b: Uint8Array): { md5?: string; sha1?: string } {
  if (b.length < DIGEST_SIZE)
    throw corrupt(file, `digest section: ${b.length} bytes is too short (need ${DIGEST_SIZE})`);
  checkSum(file, 'digest section', b.subarray(0, 76), dv(b).getUint32(76, true));
  const md5 = b.subarray(0, 16);
  const sha1 = b.subarray(16, 36);
  return { ...(isZero(md5) ? {} : { md5: hex(md5) }), ...(isZero(sha1) ? {} : { sha1: hex(sha1) }) };
}

export function digestSection(md5: Uint8Array, sha1: Uint8Array): Uint8Array {
  const b = new Uint8Array(DIGEST_SIZE);
  b.set(md5, 0);
  b.set(sha1, 16);
  dv(b).setUint32(76, adler32(b.subarray(0, 76)), true);
  return b;
}

// --- error2 ------------------------------------------------------------------

export interface SectorRange {
  firstSector: number;
  sectorCount: number;
}

export function parseError2(file: string, b: Uint8Array): SectorRange[] {
  if (b.length < ERROR2_HEADER_SIZE)
    throw corrupt(file, `error2 section: ${b.length} bytes is too short for its header`);
  const v = dv(b);
  checkSum(file, 'error2 header', b.subarray(0, 516), v.getUint32(516, true));
  const count = v.getUint32(0, true);
  const need = ERROR2_HEADER_SIZE + 8 * count + (count > 0 ? 4 : 0);
  if (need > b.length)
    throw corrupt(file, `error2 section: ${count} entries need ${need} bytes but it holds ${b.length}`);
  const body = b.subarray(ERROR2_HEADER_SIZE, ERROR2_HEADER_SIZE + 8 * count);
  if (count > 0) checkSum(file, 'error2 entries', body, v.getUint32(ERROR2_HEADER_SIZE + 8 * count, true));
  const out: SectorRange[] = [];
  for (let i = 0; i < count; i++) {
    out.push({
      firstSector: v.getUint32(ERROR2_HEADER_SIZE + 8 * i, true),
      sectorCount: v.getUint32(ERROR2_HEADER_SIZE + 8 * i + 4, true),
    });
  }
  return out;
}

export function error2Section(ranges: readonly SectorRange[]): Uint8Array {
  const b = new Uint8Array(ERROR2_HEADER_SIZE + 8 * ranges.length + 4);
  const v = dv(b);
  v.setUint32(0, ranges.length, true);
  v.setUint32(516, adler32(b.subarray(0, 516)), true);
  ranges.forEach((r, i) => {
    v.setUint32(ERROR2_HEADER_SIZE + 8 * i, r.firstSector, true);
    v.setUint32(ERROR2_HEADER_SIZE + 8 * i + 4, r.sectorCount, true);
  });
  const end = ERROR2_HEADER_SIZE + 8 * ranges.length;
  v.setUint32(end, adler32(b.subarray(ERROR2_HEADER_SIZE, end)), true);
  return b;
}
