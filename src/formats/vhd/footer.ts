/**
 * The VHD footer (Microsoft "Virtual Hard Disk Image Format Specification",
 * big-endian, 512 bytes). A fixed disk has it only at the end of the file; a
 * dynamic or differencing disk also has a copy at offset 0.
 *
 *   off size field                 off size field
 *   0   8   cookie "conectix"       48  8   current size (bytes)
 *   8   4   features (bit 1 set)    56  4   geometry: cyl u16, heads u8, spt u8
 *   12  4   version 0x00010000      60  4   disk type: 2 fixed, 3 dynamic, 4 diff
 *   16  8   data offset (-1 fixed)  64  4   checksum: ~(sum of the other bytes)
 *   24  4   time (s since 2000)     68  16  unique id
 *   28  4   creator application     84  1   saved state
 *   32  4   creator version         85  427 reserved
 *   36  4   creator host OS
 *   40  8   original size
 *
 * Which size is the disk's: Virtual PC sizes the disk by the CHS product, Hyper-V
 * by the current size. qemu decides by the creator application (see diskSize());
 * platter follows that rule so that it reads every image as qemu does, and it
 * writes the creator application "win " (Hyper-V's: the current size is the size)
 * so that qemu, Hyper-V and libvhdi all read the exact size platter wrote.
 */
import { u64, viewOf } from '../../core/bytes.js';
import { corrupt } from '../../core/errors.js';

export const FOOTER_SIZE = 512;
export const COOKIE = 'conectix';
export const DISK_FIXED = 2;
export const DISK_DYNAMIC = 3;
export const DISK_DIFFERENCING = 4;
/** No data offset (fixed disks): all 64 bits set. */
export const NO_OFFSET = -1;
/** Largest disk qemu and Hyper-V accept: 2040 GiB. */
export const MAX_VHD_SIZE = 2040 * 2 ** 30;
/** The largest CHS product the spec's algorithm yields (65535 x 16 x 255 sectors). */
export const MAX_CHS_SECTORS = 65535 * 16 * 255;
/** Creator applications whose images qemu sizes by the current size, not by CHS. */
const CURRENT_SIZE_CREATORS = ['win ', 'qem2', 'd2v ', 'CTXS', 'tap\0'];
/** What platter writes (see the note above). */
export const CREATOR_APP = 'win ';
const CREATOR_VERSION = 0x000a0000;
const CREATOR_OS_WINDOWS = 0x5769326b; // "Wi2k"
const EPOCH_2000 = 946684800;

export interface Geometry {
  cylinders: number;
  heads: number;
  sectorsPerTrack: number;
}

export interface Footer {
  features: number;
  version: number;
  /** File offset of the dynamic header, or NO_OFFSET. */
  dataOffset: number;
  timestamp: number;
  creatorApp: string;
  creatorVersion: number;
  creatorOs: number;
  originalSize: number;
  currentSize: number;
  geometry: Geometry;
  diskType: number;
  checksum: number;
  uuid: Uint8Array;
  savedState: number;
}

/** One's complement of the byte sum, skipping the 4-byte checksum field at `at`. */
export function checksum(buf: Uint8Array, at: number): number {
  let sum = 0;
  for (let i = 0; i < buf.length; i++) {
    if (i < at || i >= at + 4) sum += buf[i];
  }
  return ~sum >>> 0;
}

export function hasCookie(buf: Uint8Array, cookie: string): boolean {
  if (buf.length < cookie.length) return false;
  for (let i = 0; i < cookie.length; i++) if (buf[i] !== cookie.charCodeAt(i)) return false;
  return true;
}

const ascii = (b: Uint8Array): string => String.fromCharCode(...b);

export function parseFooter(buf: Uint8Array, file: string): Footer {
  const v = viewOf(buf);
  const rawOffset = v.getBigUint64(16, false);
  return {
    features: v.getUint32(8, false),
    version: v.getUint32(12, false),
    dataOffset: rawOffset === 0xffffffffffffffffn ? NO_OFFSET : u64(v, 16, false, 'footer data offset', file),
    timestamp: v.getUint32(24, false),
    creatorApp: ascii(buf.subarray(28, 32)),
    creatorVersion: v.getUint32(32, false),
    creatorOs: v.getUint32(36, false),
    originalSize: u64(v, 40, false, 'footer original size', file),
    currentSize: u64(v, 48, false, 'footer current size', file),
    geometry: { cylinders: v.getUint16(56, false), heads: buf[58], sectorsPerTrack: buf[59] },
    diskType: v.getUint32(60, false),
    checksum: v.getUint32(64, false),
    uuid: buf.slice(68, 84),
    savedState: buf[84],
  };
}

export function serializeFooter(f: Footer): Uint8Array {
  const buf = new Uint8Array(FOOTER_SIZE);
  const v = viewOf(buf);
  buf.set(new TextEncoder().encode(COOKIE), 0);
  v.setUint32(8, f.features, false);
  v.setUint32(12, f.version, false);
  v.setBigUint64(16, f.dataOffset === NO_OFFSET ? 0xffffffffffffffffn : BigInt(f.dataOffset), false);
  v.setUint32(24, f.timestamp, false);
  for (let i = 0; i < 4; i++) buf[28 + i] = f.creatorApp.charCodeAt(i) & 0xff;
  v.setUint32(32, f.creatorVersion, false);
  v.setUint32(36, f.creatorOs, false);
  v.setBigUint64(40, BigInt(f.originalSize), false);
  v.setBigUint64(48, BigInt(f.currentSize), false);
  v.setUint16(56, f.geometry.cylinders, false);
  buf[58] = f.geometry.heads;
  buf[59] = f.geometry.sectorsPerTrack;
  v.setUint32(60, f.diskType, false);
  buf.set(f.uuid, 68);
  buf[84] = f.savedState;
  v.setUint32(64, checksum(buf, 64), false);
  return buf;
}

/** CHS geometry for a sector count, exactly as the specification's appendix computes it. */
export function chsGeometry(totalSectors: number): Geometry {
  const ts = Math.min(totalSectors, MAX_CHS_SECTORS);
  let spt: number;
  let heads: number;
  let cth: number;
  if (ts >= 65535 * 16 * 63) {
    spt = 255;
    heads = 16;
    cth = Math.floor(ts / spt);
  } else {
    spt = 17;
    cth = Math.floor(ts / spt);
    heads = Math.max(4, Math.floor((cth + 1023) / 1024));
    if (cth >= heads * 1024 || heads > 16) {
      spt = 31;
      heads = 16;
      cth = Math.floor(ts / spt);
    }
    if (cth >= heads * 1024) {
      spt = 63;
      heads = 16;
      cth = Math.floor(ts / spt);
    }
  }
  return { cylinders: Math.floor(cth / heads), heads, sectorsPerTrack: spt };
}

export const chsSectors = (g: Geometry): number => g.cylinders * g.heads * g.sectorsPerTrack;

/**
 * The smallest size >= `size` (a multiple of 512) that a CHS geometry covers
 * exactly, as qemu-img does without force_size; sizes past the CHS range keep
 * their byte size (their geometry is the maximum one).
 */
export function roundUpToChs(size: number): number {
  const sectors = Math.ceil(size / 512);
  if (sectors >= MAX_CHS_SECTORS) return sectors * 512;
  for (let s = sectors; ; s++) {
    const g = chsGeometry(s);
    if (chsSectors(g) >= sectors)
      return chsSectors(g) === MAX_CHS_SECTORS ? sectors * 512 : chsSectors(g) * 512;
  }
}

/**
 * The disk size readers derive from a footer (qemu's rule): the current size
 * for creators that trust it or when the geometry is the maximum one, else the
 * CHS product (Virtual PC's and old qemu's images). A zero geometry falls back
 * to the current size. Sizes are whole sectors.
 */
export function diskSize(f: Footer): number {
  const chs = chsSectors(f.geometry);
  const current = Math.floor(f.currentSize / 512) * 512;
  if (CURRENT_SIZE_CREATORS.includes(f.creatorApp) || chs === MAX_CHS_SECTORS || chs === 0) return current;
  return chs * 512;
}

/** A new footer for platter's images. */
export function newFooter(size: number, diskType: number, dataOffset: number, uuid: Uint8Array): Footer {
  return {
    features: 2,
    version: 0x00010000,
    dataOffset,
    timestamp: vhdTime(),
    creatorApp: CREATOR_APP,
    creatorVersion: CREATOR_VERSION,
    creatorOs: CREATOR_OS_WINDOWS,
    originalSize: size,
    currentSize: size,
    geometry: chsGeometry(size / 512),
    diskType,
    checksum: 0,
    uuid,
    savedState: 0,
  };
}

/**
 * A footer after a resize: new sizes and geometry; the creator becomes platter's
 * so the size is trusted. The original size changes too: libvhdi takes the disk
 * size from that field, qemu and Hyper-V from the current size.
 */
export function resizedFooter(f: Footer, size: number): Footer {
  return {
    ...f,
    originalSize: size,
    currentSize: size,
    geometry: chsGeometry(size / 512),
    creatorApp: CREATOR_APP,
    creatorVersion: CREATOR_VERSION,
    creatorOs: CREATOR_OS_WINDOWS,
    timestamp: vhdTime(),
  };
}

export function vhdTime(): number {
  return Math.max(0, Math.floor(Date.now() / 1000) - EPOCH_2000) >>> 0;
}

/** A big-endian GUID as text. */
export function uuidText(u: Uint8Array): string {
  const h = Buffer.from(u).toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

/** Checks the footer's own fields that every kind needs. */
export function checkFooter(f: Footer, file: string): void {
  if (![DISK_FIXED, DISK_DYNAMIC, DISK_DIFFERENCING].includes(f.diskType)) {
    throw corrupt(file, `footer disk type ${f.diskType} is not 2 (fixed), 3 (dynamic) or 4 (differencing)`);
  }
  if (f.version >>> 16 !== 1) {
    throw corrupt(file, `footer format version 0x${f.version.toString(16)} is not 1.x`);
  }
}
