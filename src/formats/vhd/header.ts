/**
 * The dynamic disk header of dynamic and differencing VHDs (1024 bytes,
 * big-endian, at the footer's data offset) and its parent locators.
 *
 *   off size field                    off size field
 *   0   8    cookie "cxsparse"         40  16   parent unique id
 *   8   8    data offset (-1)          56  4    parent time stamp
 *   16  8    table (BAT) offset        60  4    reserved
 *   24  4    version 0x00010000        64  512  parent name, UTF-16 BE
 *   28  4    max table entries         576 8x24 parent locators
 *   32  4    block size (2 MiB)        768 256  reserved
 *   36  4    checksum
 *
 * A parent locator: platform code u32, data space u32, data length u32,
 * reserved u32, data offset u64. Codes: "W2ru" (path relative to the child,
 * UTF-16 LE, e.g. ".\base.vhd"), "W2ku" (absolute Windows path, UTF-16 LE),
 * "MacX" (file URL, UTF-8), "Mac " (an alias record; ignored). The spec says
 * the data space counts sectors; Hyper-V writes bytes. platter writes bytes
 * rounded up to whole sectors (a value readers accept either way: tools that
 * see >= 512 take it as bytes) and trusts only the data length when reading.
 */
import { u64, viewOf } from '../../core/bytes.js';
import { corrupt, unsupported } from '../../core/errors.js';
import { checksum } from './footer.js';

export const HEADER_SIZE = 1024;
export const HEADER_COOKIE = 'cxsparse';
export const LOCATOR_COUNT = 8;
export const CODE_W2RU = 0x57327275;
export const CODE_W2KU = 0x57326b75;
export const CODE_MACX = 0x4d616358;
/** Sanity limit for one locator's data. */
export const MAX_LOCATOR_LENGTH = 64 * 1024;

export interface Locator {
  code: number;
  dataSpace: number;
  dataLength: number;
  dataOffset: number;
}

export interface DynamicHeader {
  tableOffset: number;
  version: number;
  maxTableEntries: number;
  blockSize: number;
  checksum: number;
  parentUuid: Uint8Array;
  parentTimestamp: number;
  parentName: string;
  locators: Locator[];
}

export function parseHeader(buf: Uint8Array, file: string): DynamicHeader {
  const v = viewOf(buf);
  const locators: Locator[] = [];
  for (let i = 0; i < LOCATOR_COUNT; i++) {
    const at = 576 + 24 * i;
    locators.push({
      code: v.getUint32(at, false),
      dataSpace: v.getUint32(at + 4, false),
      dataLength: v.getUint32(at + 8, false),
      dataOffset: u64(v, at + 16, false, `parent locator ${i} data offset`, file),
    });
  }
  return {
    tableOffset: u64(v, 16, false, 'dynamic header table offset', file),
    version: v.getUint32(24, false),
    maxTableEntries: v.getUint32(28, false),
    blockSize: v.getUint32(32, false),
    checksum: v.getUint32(36, false),
    parentUuid: buf.slice(40, 56),
    parentTimestamp: v.getUint32(56, false),
    parentName: decodeUtf16(buf.subarray(64, 576), false),
    locators,
  };
}

export function serializeHeader(h: DynamicHeader): Uint8Array {
  const buf = new Uint8Array(HEADER_SIZE);
  const v = viewOf(buf);
  buf.set(new TextEncoder().encode(HEADER_COOKIE), 0);
  v.setBigUint64(8, 0xffffffffffffffffn, false);
  v.setBigUint64(16, BigInt(h.tableOffset), false);
  v.setUint32(24, h.version, false);
  v.setUint32(28, h.maxTableEntries, false);
  v.setUint32(32, h.blockSize, false);
  buf.set(h.parentUuid, 40);
  v.setUint32(56, h.parentTimestamp, false);
  buf.set(encodeUtf16(h.parentName, false).subarray(0, 512), 64);
  h.locators.forEach((l, i) => {
    const at = 576 + 24 * i;
    v.setUint32(at, l.code, false);
    v.setUint32(at + 4, l.dataSpace, false);
    v.setUint32(at + 8, l.dataLength, false);
    v.setBigUint64(at + 16, BigInt(l.dataOffset), false);
  });
  v.setUint32(36, checksum(buf, 36), false);
  return buf;
}

export function emptyLocators(): Locator[] {
  return Array.from({ length: LOCATOR_COUNT }, () => ({
    code: 0,
    dataSpace: 0,
    dataLength: 0,
    dataOffset: 0,
  }));
}

export function decodeUtf16(b: Uint8Array, littleEndian: boolean): string {
  let s = '';
  for (let i = 0; i + 1 < b.length; i += 2) {
    const c = littleEndian ? b[i] | (b[i + 1] << 8) : (b[i] << 8) | b[i + 1];
    if (c === 0) break;
    s += String.fromCharCode(c);
  }
  return s;
}

export function encodeUtf16(s: string, littleEndian: boolean): Uint8Array {
  const out = new Uint8Array(s.length * 2);
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    out[2 * i + (littleEndian ? 0 : 1)] = c & 0xff;
    out[2 * i + (littleEndian ? 1 : 0)] = c >> 8;
  }
  return out;
}

/** A locator's data as a path with '/' separators, or undefined for codes platter cannot use. */
export function locatorPath(code: number, data: Uint8Array): string | undefined {
  switch (code) {
    case CODE_W2RU:
    case CODE_W2KU:
      return decodeUtf16(data, true).replace(/\\/g, '/');
    case CODE_MACX: {
      const text = new TextDecoder().decode(data).replace(/\0.*$/s, '');
      const m = /^file:\/\/(?:localhost)?(.*)$/i.exec(text);
      try {
        return decodeURIComponent(m ? m[1] : text);
      } catch {
        return undefined;
      }
    }
    default:
      return undefined;
  }
}

/**
 * The most BAT entries platter keeps in memory (a 64 MiB table): the format's
 * 2040 GiB in blocks of 128 KiB. Real VHDs use 2 MiB (Hyper-V, qemu) or 512 KiB
 * (Virtual PC) blocks; the field itself could ask for 16 GiB.
 */
export const MAX_BAT_ENTRIES = 2 ** 24;

/**
 * The BAT entries that cover a disk (Max Table Entries should be exactly that
 * many: spec, "Dynamic Disk Header Format"); refused past MAX_BAT_ENTRIES.
 */
export function batEntries(name: string, diskSize: number, blockSize: number): number {
  const n = Math.ceil(diskSize / blockSize);
  if (n > MAX_BAT_ENTRIES) {
    throw unsupported(
      `${name}: ${diskSize} bytes in blocks of ${blockSize} need ${n} BAT entries, more than platter handles (${MAX_BAT_ENTRIES}); a larger block size needs fewer`,
    );
  }
  return n;
}

/** Checks the header fields that sizes and allocations depend on. */
export function checkHeader(h: DynamicHeader, file: string, fileSize: number, diskSize: number): void {
  const bs = h.blockSize;
  if (bs < 512 || bs > 256 * 2 ** 20 || (bs & (bs - 1)) !== 0) {
    throw corrupt(file, `dynamic header block size ${bs} is not a power of two between 512 and 256 MiB`);
  }
  batEntries(file, diskSize, bs);
  if (h.maxTableEntries * bs < diskSize) {
    throw corrupt(
      file,
      `dynamic header max table entries ${h.maxTableEntries} x block size ${bs} does not cover the disk size ${diskSize}`,
    );
  }
  if (h.tableOffset + h.maxTableEntries * 4 > fileSize) {
    throw corrupt(
      file,
      `BAT at offset ${h.tableOffset} with ${h.maxTableEntries} entries is past the end of file (size ${fileSize})`,
    );
  }
}
