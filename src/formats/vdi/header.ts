/**
 * The VDI header, version 1.1 (VirtualBox's VDIHEADER1/1PLUS layout,
 * little-endian; qemu's block/vdi.c reads the same fields).
 *
 *   off size field                     off size field
 *   0   64  text (ignored by readers)  368 8   disk size (bytes)
 *   64  4   signature 0xbeda107f       376 4   block size (1 MiB)
 *   68  4   version 0x00010001         380 4   block extra data (0)
 *   72  4   header size (384 or 400)   384 4   blocks in image
 *   76  4   type: 1 dynamic, 2 static, 388 4   blocks allocated
 *           3 undo, 4 differencing     392 16  UUID of this image
 *   80  4   flags                      408 16  UUID of its last modification
 *   84  256 comment                    424 16  UUID of the parent (link)
 *   340 4   block map offset           440 16  parent's modification UUID
 *   344 4   data offset                456 16  LCHS geometry (header size 400)
 *   348 16  legacy geometry, sector size (512)
 *   364 4   unused
 *
 * Block map: u32 per block, the index of the block in the data area, or
 * 0xFFFFFFFF (unallocated: zeros, or the parent's data in a differencing
 * image) or 0xFFFFFFFE (a zero block). qemu-img check wants the allocated
 * indexes to be exactly 0 .. blocks allocated - 1, each once.
 *
 * VirtualBox finds a differencing image's parent by UUID in its media
 * registry; an image carries no file name. platter records the parent's file
 * name (as given to -b, relative to the child) in the comment as a line
 * `parent=NAME` and resolves it next to the child, then checks the UUID.
 */
import { u64, viewOf } from '../../core/bytes.js';

export const SIGNATURE = 0xbeda107f;
export const VERSION_1_1 = 0x00010001;
export const HEADER_BYTES = 512;
export const TYPE_DYNAMIC = 1;
export const TYPE_STATIC = 2;
export const TYPE_UNDO = 3;
export const TYPE_DIFF = 4;
export const UNALLOCATED = 0xffffffff;
export const ZERO_BLOCK = 0xfffffffe;
export const DEFAULT_BLOCK_SIZE = 1 << 20;
const TEXT = '<<< Oracle VM VirtualBox Disk Image >>>\n';

export interface VdiHeader {
  headerSize: number;
  type: number;
  flags: number;
  comment: string;
  offsetBmap: number;
  offsetData: number;
  sectorSize: number;
  diskSize: number;
  blockSize: number;
  blockExtra: number;
  blocksInImage: number;
  blocksAllocated: number;
  uuidImage: Uint8Array;
  uuidModify: Uint8Array;
  uuidLink: Uint8Array;
  uuidParentModify: Uint8Array;
  /** Bytes 348..364 and 456..472 kept as read (legacy and LCHS geometry). */
  geometry: Uint8Array;
}

export function parseHeader(buf: Uint8Array, file: string): VdiHeader {
  const v = viewOf(buf);
  const geometry = new Uint8Array(32);
  geometry.set(buf.subarray(348, 364), 0);
  geometry.set(buf.subarray(456, 472), 16);
  return {
    headerSize: v.getUint32(72, true),
    type: v.getUint32(76, true),
    flags: v.getUint32(80, true),
    comment: new TextDecoder().decode(buf.subarray(84, 340)).replace(/\0.*$/s, ''),
    offsetBmap: v.getUint32(340, true),
    offsetData: v.getUint32(344, true),
    sectorSize: v.getUint32(360, true),
    diskSize: u64(v, 368, true, 'disk size', file),
    blockSize: v.getUint32(376, true),
    blockExtra: v.getUint32(380, true),
    blocksInImage: v.getUint32(384, true),
    blocksAllocated: v.getUint32(388, true),
    uuidImage: buf.slice(392, 408),
    uuidModify: buf.slice(408, 424),
    uuidLink: buf.slice(424, 440),
    uuidParentModify: buf.slice(440, 456),
    geometry,
  };
}

export function serializeHeader(h: VdiHeader): Uint8Array {
  const buf = new Uint8Array(HEADER_BYTES);
  const v = viewOf(buf);
  buf.set(new TextEncoder().encode(TEXT), 0);
  v.setUint32(64, SIGNATURE, true);
  v.setUint32(68, VERSION_1_1, true);
  v.setUint32(72, h.headerSize, true);
  v.setUint32(76, h.type, true);
  v.setUint32(80, h.flags, true);
  buf.set(new TextEncoder().encode(h.comment).subarray(0, 255), 84);
  v.setUint32(340, h.offsetBmap, true);
  v.setUint32(344, h.offsetData, true);
  buf.set(h.geometry.subarray(0, 16), 348);
  v.setUint32(360, h.sectorSize, true);
  v.setBigUint64(368, BigInt(h.diskSize), true);
  v.setUint32(376, h.blockSize, true);
  v.setUint32(380, h.blockExtra, true);
  v.setUint32(384, h.blocksInImage, true);
  v.setUint32(388, h.blocksAllocated, true);
  buf.set(h.uuidImage, 392);
  buf.set(h.uuidModify, 408);
  buf.set(h.uuidLink, 424);
  buf.set(h.uuidParentModify, 440);
  if (h.headerSize >= 400) buf.set(h.geometry.subarray(16, 32), 456);
  return buf;
}

/** The parent file name platter records in the comment, if any. */
export function parentFromComment(comment: string): string | undefined {
  const m = /(?:^|\n)parent=([^\n]+)/.exec(comment);
  return m ? m[1] : undefined;
}

export function commentWithParent(comment: string, name: string | undefined): string {
  const rest = comment
    .split('\n')
    .filter((l) => !l.startsWith('parent=') && l !== '')
    .join('\n');
  const line = name === undefined ? '' : `parent=${name}`;
  return [line, rest].filter((x) => x !== '').join('\n');
}

/** A little-endian GUID (RTUUID) as text. */
export function uuidText(u: Uint8Array): string {
  const h = (a: number, b: number, rev: boolean): string => {
    const part = Array.from(u.subarray(a, b));
    if (rev) part.reverse();
    return part.map((x) => x.toString(16).padStart(2, '0')).join('');
  };
  return `${h(0, 4, true)}-${h(4, 6, true)}-${h(6, 8, true)}-${h(8, 10, false)}-${h(10, 16, false)}`;
}

export const isNullUuid = (u: Uint8Array): boolean => u.every((b) => b === 0);
export const sameUuid = (a: Uint8Array, b: Uint8Array): boolean => a.every((x, i) => x === b[i]);
