/**
 * The metadata region ([MS-VHDX] 2.6): a 64 KiB table ("metadata", up to 2047
 * entries of {item GUID, offset, length, flags}) followed by the items.
 *
 *   item                 | size | platter uses it for
 *   ---------------------|------|-----------------------------------------------
 *   file parameters      | 8    | block size (1-256 MiB, power of 2), LeaveBlockAllocated (fixed), HasParent
 *   virtual disk size    | 8    | the disk size (multiple of the logical sector, <= 64 TiB)
 *   virtual disk id      | 16   | page 83 identity, shown by info
 *   logical sector size  | 4    | 512 or 4096: sector bitmap unit and chunk size
 *   physical sector size | 4    | 512 or 4096, shown by info
 *   parent locator       | var  | differencing disks: type GUID + UTF-16 key/value pairs
 */
import { viewOf } from '../../core/bytes.js';
import { corrupt, unsupported } from '../../core/errors.js';
import { type Guid, guid, guidEqual, guidText } from './guid.js';
import { KiB, MiB } from './layout.js';

export const TABLE_SIZE = 64 * KiB;
const SIGNATURE = 'metadata';
const MAX_ENTRIES = 2047;
/** An item is at most 1 MiB by the specification. */
const MAX_ITEM = MiB;

export const FILE_PARAMETERS = guid('CAA16737-FA36-4D43-B3B6-33F0AA44E76B');
export const VIRTUAL_DISK_SIZE = guid('2FA54224-CD1B-4876-B211-5DBED83BF4B8');
export const VIRTUAL_DISK_ID = guid('BECA12AB-B2E6-4523-93EF-C309E000C746');
export const LOGICAL_SECTOR_SIZE = guid('8141BF1D-A96F-4709-BA47-F233A8FAAB5F');
export const PHYSICAL_SECTOR_SIZE = guid('CDA348C7-445D-4471-9CC9-E9885251C556');
export const PARENT_LOCATOR = guid('A8D35F2D-B30B-454D-ABF7-D3D84834AB0C');
export const VHDX_LOCATOR_TYPE = guid('B04AEFB7-D19E-4A81-B789-25B8E9445913');

const FLAG_USER = 1;
const FLAG_VIRTUAL_DISK = 2;
const FLAG_REQUIRED = 4;

export interface Metadata {
  blockSize: number;
  leaveBlockAllocated: boolean;
  hasParent: boolean;
  size: number;
  diskId: Guid;
  logicalSectorSize: number;
  physicalSectorSize: number;
  parent?: ParentLocator;
}

export interface ParentLocator {
  type: Guid;
  entries: Map<string, string>;
}

interface Entry {
  id: Guid;
  offset: number;
  length: number;
  flags: number;
}

const KNOWN = [
  FILE_PARAMETERS,
  VIRTUAL_DISK_SIZE,
  VIRTUAL_DISK_ID,
  LOGICAL_SECTOR_SIZE,
  PHYSICAL_SECTOR_SIZE,
  PARENT_LOCATOR,
];

/**
 * Parses the metadata region. `readItem(offset, length)` reads bytes relative to
 * the region start; `regionLength` bounds every item.
 */
export async function parseMetadata(
  table: Uint8Array,
  regionLength: number,
  readItem: (offset: number, length: number) => Promise<Uint8Array>,
  file: string,
): Promise<Metadata> {
  const v = viewOf(table);
  if (new TextDecoder().decode(table.subarray(0, 8)) !== SIGNATURE) {
    throw corrupt(file, 'metadata table signature is not "metadata"');
  }
  const count = v.getUint16(10, true);
  if (count > MAX_ENTRIES)
    throw corrupt(file, `metadata entry count ${count} is above the limit ${MAX_ENTRIES}`);
  const entries: Entry[] = [];
  for (let i = 0; i < count; i++) {
    const at = 32 + i * 32;
    const e: Entry = {
      id: table.slice(at, at + 16),
      offset: v.getUint32(at + 16, true),
      length: v.getUint32(at + 20, true),
      flags: v.getUint32(at + 24, true),
    };
    const known = KNOWN.some((k) => guidEqual(k, e.id));
    if (!known) {
      if (e.flags & FLAG_REQUIRED) {
        throw unsupported(`${file}: VHDX metadata item ${guidText(e.id)} is required but unknown to platter`);
      }
      continue;
    }
    if (e.length > MAX_ITEM) {
      throw corrupt(
        file,
        `metadata item ${guidText(e.id)} length ${e.length} is above the limit ${MAX_ITEM}`,
      );
    }
    if (e.length > 0 && (e.offset < TABLE_SIZE || e.offset + e.length > regionLength)) {
      throw corrupt(
        file,
        `metadata item ${guidText(e.id)} at offset ${e.offset} length ${e.length} is outside the metadata region (64 KiB..${regionLength})`,
      );
    }
    if (entries.some((x) => guidEqual(x.id, e.id) && (x.flags & FLAG_USER) === (e.flags & FLAG_USER))) {
      throw corrupt(file, `metadata item ${guidText(e.id)} appears twice`);
    }
    entries.push(e);
  }
  const item = async (id: Guid, name: string, minLength: number): Promise<Uint8Array | undefined> => {
    const e = entries.find((x) => guidEqual(x.id, id) && !(x.flags & FLAG_USER));
    if (!e) return undefined;
    if (e.length < minLength)
      throw corrupt(file, `metadata item ${name} length ${e.length} is below ${minLength}`);
    return readItem(e.offset, e.length);
  };
  const need = async (id: Guid, name: string, minLength: number): Promise<DataView> => {
    const b = await item(id, name, minLength);
    if (!b) throw corrupt(file, `metadata item ${name} is missing`);
    return viewOf(b);
  };

  const fp = await need(FILE_PARAMETERS, 'file parameters', 8);
  const blockSize = fp.getUint32(0, true);
  const bits = fp.getUint32(4, true);
  if (blockSize < MiB || blockSize > 256 * MiB || (blockSize & (blockSize - 1)) !== 0) {
    throw corrupt(file, `block size ${blockSize} is not a power of 2 between 1 MiB and 256 MiB`);
  }
  const logical = (await need(LOGICAL_SECTOR_SIZE, 'logical sector size', 4)).getUint32(0, true);
  if (logical !== 512 && logical !== 4096)
    throw corrupt(file, `logical sector size ${logical} is not 512 or 4096`);
  const physical = (await need(PHYSICAL_SECTOR_SIZE, 'physical sector size', 4)).getUint32(0, true);
  if (physical !== 512 && physical !== 4096)
    throw corrupt(file, `physical sector size ${physical} is not 512 or 4096`);
  const sizeBig = (await need(VIRTUAL_DISK_SIZE, 'virtual disk size', 8)).getBigUint64(0, true);
  const maxSize = 64n * 2n ** 40n;
  if (sizeBig > maxSize) throw corrupt(file, `virtual disk size ${sizeBig} is above the limit 64 TiB`);
  const size = Number(sizeBig);
  if (size % logical !== 0)
    throw corrupt(file, `virtual disk size ${size} is not a multiple of the sector size ${logical}`);
  const id = await need(VIRTUAL_DISK_ID, 'virtual disk id', 16);
  const md: Metadata = {
    blockSize,
    leaveBlockAllocated: (bits & 1) === 1,
    hasParent: (bits & 2) === 2,
    size,
    diskId: new Uint8Array(id.buffer, id.byteOffset, 16).slice(),
    logicalSectorSize: logical,
    physicalSectorSize: physical,
  };
  const pl = await item(PARENT_LOCATOR, 'parent locator', 20);
  if (pl) md.parent = parseParentLocator(pl, file);
  if (md.hasParent && !md.parent)
    throw corrupt(file, 'differencing disk (HasParent) without a parent locator');
  return md;
}

function parseParentLocator(buf: Uint8Array, file: string): ParentLocator {
  const v = viewOf(buf);
  const count = v.getUint16(18, true);
  if (20 + count * 12 > buf.length) {
    throw corrupt(
      file,
      `parent locator key/value count ${count} does not fit its item of ${buf.length} bytes`,
    );
  }
  const entries = new Map<string, string>();
  const str = (off: number, len: number, what: string): string => {
    if (off === 0 || len === 0 || off + len > buf.length || len % 2 !== 0) {
      throw corrupt(
        file,
        `parent locator ${what} at ${off} length ${len} is outside its item (${buf.length} bytes)`,
      );
    }
    return new TextDecoder('utf-16le').decode(buf.subarray(off, off + len));
  };
  for (let i = 0; i < count; i++) {
    const at = 20 + i * 12;
    const key = str(v.getUint32(at, true), v.getUint16(at + 8, true), `key ${i}`);
    const value = str(v.getUint32(at + 4, true), v.getUint16(at + 10, true), `value ${i}`);
    entries.set(key, value);
  }
  return { type: buf.slice(0, 16), entries };
}

export function serializeParentLocator(p: ParentLocator): Uint8Array {
  const enc = (s: string): Uint8Array => {
    const b = new Uint8Array(s.length * 2);
    for (let i = 0; i < s.length; i++) {
      b[i * 2] = s.charCodeAt(i) & 0xff;
      b[i * 2 + 1] = s.charCodeAt(i) >> 8;
    }
    return b;
  };
  const pairs = [...p.entries].map(([k, val]) => [enc(k), enc(val)] as const);
  let len = 20 + pairs.length * 12;
  for (const [k, val] of pairs) len += k.length + val.length;
  const buf = new Uint8Array(len);
  const v = viewOf(buf);
  buf.set(p.type, 0);
  v.setUint16(18, pairs.length, true);
  let pos = 20 + pairs.length * 12;
  pairs.forEach(([k, val], i) => {
    const at = 20 + i * 12;
    v.setUint32(at, pos, true);
    buf.set(k, pos);
    pos += k.length;
    v.setUint32(at + 4, pos, true);
    buf.set(val, pos);
    pos += val.length;
    v.setUint16(at + 8, k.length, true);
    v.setUint16(at + 10, val.length, true);
  });
  return buf;
}

/** Builds a whole metadata region (table at 0, items from 64 KiB) of `regionLength` bytes. */
export function serializeMetadata(md: Metadata): Uint8Array {
  const items: Array<[Guid, number, Uint8Array]> = [];
  const fp = new Uint8Array(8);
  viewOf(fp).setUint32(0, md.blockSize, true);
  viewOf(fp).setUint32(4, (md.leaveBlockAllocated ? 1 : 0) | (md.hasParent ? 2 : 0), true);
  items.push([FILE_PARAMETERS, FLAG_REQUIRED, fp]);
  const vs = new Uint8Array(8);
  viewOf(vs).setBigUint64(0, BigInt(md.size), true);
  items.push([VIRTUAL_DISK_SIZE, FLAG_REQUIRED | FLAG_VIRTUAL_DISK, vs]);
  items.push([VIRTUAL_DISK_ID, FLAG_REQUIRED | FLAG_VIRTUAL_DISK, md.diskId]);
  const ls = new Uint8Array(4);
  viewOf(ls).setUint32(0, md.logicalSectorSize, true);
  items.push([LOGICAL_SECTOR_SIZE, FLAG_REQUIRED | FLAG_VIRTUAL_DISK, ls]);
  const ps = new Uint8Array(4);
  viewOf(ps).setUint32(0, md.physicalSectorSize, true);
  items.push([PHYSICAL_SECTOR_SIZE, FLAG_REQUIRED | FLAG_VIRTUAL_DISK, ps]);
  if (md.hasParent && md.parent)
    items.push([PARENT_LOCATOR, FLAG_REQUIRED, serializeParentLocator(md.parent)]);

  let total = TABLE_SIZE;
  for (const [, , b] of items) total += b.length;
  const buf = new Uint8Array(Math.ceil(total / (4 * KiB)) * 4 * KiB);
  const v = viewOf(buf);
  buf.set(new TextEncoder().encode(SIGNATURE), 0);
  v.setUint16(10, items.length, true);
  let pos = TABLE_SIZE;
  items.forEach(([id, flags, data], i) => {
    const at = 32 + i * 32;
    buf.set(id, at);
    v.setUint32(at + 16, pos, true);
    v.setUint32(at + 20, data.length, true);
    v.setUint32(at + 24, flags, true);
    buf.set(data, pos);
    pos += data.length;
  });
  return buf;
}
