/**
 * vdi: VirtualBox's Virtual Disk Image, header version 1.1 (header.ts for the
 * layout, disk.ts for the open image). Static, dynamic and differencing
 * images; undo images (type 3) and header version 0 are refused.
 *
 * Create options: subformat=dynamic|static, qemu's static=on|off,
 * preallocation=off|metadata|falloc|full (falloc/full make a static image).
 * Differencing images (-b) record the parent's UUID and, for finding the
 * file, its name in the comment (`parent=NAME`; see header.ts).
 */
import { alignUp, viewOf } from '../../core/bytes.js';
import { corrupt, invalid, PlatterError, unsupported } from '../../core/errors.js';
import { newUuid } from '../../core/random.js';
import type { Storage } from '../../core/storage.js';
import type { CreateContext, FormatDriver, OpenContext, OpenedImage } from '../driver.js';
import { blocksFor, MAX_BLOCKS, MAX_VDI_SIZE, mapBytes, type ParentIdentity, VdiDisk } from './disk.js';
import {
  commentWithParent,
  DEFAULT_BLOCK_SIZE,
  HEADER_BYTES,
  isNullUuid,
  parentFromComment,
  parseHeader,
  SIGNATURE,
  sameUuid,
  serializeHeader,
  TYPE_DIFF,
  TYPE_DYNAMIC,
  TYPE_STATIC,
  TYPE_UNDO,
  UNALLOCATED,
  uuidText,
  type VdiHeader,
  VERSION_1_1,
  ZERO_BLOCK,
} from './header.js';

async function probe(storage: Storage): Promise<number> {
  try {
    if ((await storage.size()) < 72) return 0;
    const b = new Uint8Array(8);
    await storage.read(b, 64);
    const v = viewOf(b);
    return v.getUint32(0, true) === SIGNATURE ? 100 : 0;
  } catch {
    return 0;
  }
}

async function readHeader(storage: Storage): Promise<VdiHeader> {
  const file = storage.name;
  const fileSize = await storage.size();
  if (fileSize < HEADER_BYTES)
    throw new PlatterError('EFORMAT', `${file}: too short to be a VDI (${fileSize} bytes)`);
  const buf = new Uint8Array(HEADER_BYTES);
  await storage.read(buf, 0);
  const v = viewOf(buf);
  if (v.getUint32(64, true) !== SIGNATURE)
    throw new PlatterError('EFORMAT', `${file}: not a VDI image (no signature at 64)`);
  const version = v.getUint32(68, true);
  if (version !== VERSION_1_1) {
    throw unsupported(`${file}: VDI header version 0x${version.toString(16)} is not supported (only 1.1)`);
  }
  return parseHeader(buf, file);
}

/** Checks every header field that offsets and allocations depend on (one guard per field). */
function checkHeader(h: VdiHeader, file: string, fileSize: number): void {
  if (h.headerSize < 0x180 || h.headerSize > HEADER_BYTES - 72) {
    throw corrupt(file, `header size ${h.headerSize} is not between 384 and ${HEADER_BYTES - 72}`);
  }
  if (h.type === TYPE_UNDO) throw unsupported(`${file}: VDI undo images (type 3) are not supported`);
  if (![TYPE_DYNAMIC, TYPE_STATIC, TYPE_DIFF].includes(h.type)) {
    throw corrupt(file, `image type ${h.type} is not 1 (dynamic), 2 (static) or 4 (differencing)`);
  }
  if (h.sectorSize !== 512) throw corrupt(file, `sector size ${h.sectorSize} is not 512`);
  const bs = h.blockSize;
  if (bs < 512 || bs > 256 * 2 ** 20 || (bs & (bs - 1)) !== 0) {
    throw corrupt(file, `block size ${bs} is not a power of two between 512 and 256 MiB`);
  }
  if (h.blockExtra !== 0)
    throw unsupported(`${file}: VDI block extra data (${h.blockExtra} bytes) is not supported`);
  if (h.blocksInImage > MAX_BLOCKS) {
    throw unsupported(
      `${file}: blocks in image ${h.blocksInImage} is more than platter handles (${MAX_BLOCKS}, 64 TiB in 1 MiB blocks)`,
    );
  }
  if (h.diskSize > MAX_VDI_SIZE)
    throw corrupt(file, `disk size ${h.diskSize} is larger than ${MAX_VDI_SIZE}`);
  if (h.blocksInImage * bs < h.diskSize) {
    throw corrupt(
      file,
      `blocks in image ${h.blocksInImage} x block size ${bs} does not cover the disk size ${h.diskSize}`,
    );
  }
  if (h.blocksAllocated > h.blocksInImage) {
    throw corrupt(
      file,
      `blocks allocated ${h.blocksAllocated} is more than blocks in image ${h.blocksInImage}`,
    );
  }
  if (h.offsetBmap % 512 !== 0 || h.offsetBmap < 72 + h.headerSize) {
    throw corrupt(file, `block map offset ${h.offsetBmap} is not sector-aligned past the header`);
  }
  if (h.offsetBmap + h.blocksInImage * 4 > fileSize) {
    throw corrupt(
      file,
      `block map at ${h.offsetBmap} (${h.blocksInImage} entries) is past the end of file (size ${fileSize})`,
    );
  }
  if (h.offsetData % 512 !== 0 || h.offsetData < h.offsetBmap + h.blocksInImage * 4) {
    throw corrupt(file, `data offset ${h.offsetData} is not sector-aligned after the block map`);
  }
}

async function identity(s: Storage): Promise<ParentIdentity | undefined> {
  try {
    const h = await readHeader(s);
    return { uuidImage: h.uuidImage, uuidModify: h.uuidModify };
  } catch (e) {
    if (e instanceof PlatterError) return undefined;
    throw e;
  }
}

async function findParent(storage: Storage, ctx: OpenContext, h: VdiHeader): Promise<string> {
  const file = storage.name;
  const name = parentFromComment(h.comment);
  if (!name) {
    throw unsupported(
      `${file}: differencing VDI whose parent (UUID ${uuidText(h.uuidLink)}) is recorded only in VirtualBox's media registry; ` +
        `platter finds parents by a 'parent=NAME' line in the image comment`,
    );
  }
  let s: Storage;
  try {
    s = await ctx.openSibling(name);
  } catch (e) {
    // Missing: openImage reports it with the name; locked: it cannot be checked now.
    if (e instanceof PlatterError && (e.code === 'ENOENT' || e.code === 'ELOCKED')) return name;
    throw e;
  }
  try {
    const id = await identity(s);
    if (!id || !sameUuid(id.uuidImage, h.uuidLink)) {
      if (ctx.options.force === 'on') return name;
      throw new PlatterError(
        'ECORRUPT',
        `${file}: parent UUID mismatch: the image links to ${uuidText(h.uuidLink)} but ${name} ` +
          `${id ? `is ${uuidText(id.uuidImage)}` : 'is not a VDI'} (open with --image-opts force=on to use it anyway)`,
      );
    }
    return name;
  } finally {
    await s.close().catch(() => undefined);
  }
}

async function open(storage: Storage, ctx: OpenContext): Promise<OpenedImage> {
  const file = storage.name;
  const fileSize = await storage.size();
  const h = await readHeader(storage);
  checkHeader(h, file, fileSize);
  // qemu rounds an odd disk size (VBoxManage convertfromraw makes them) up to a sector.
  h.diskSize = alignUp(h.diskSize, 512);
  const raw = new Uint8Array(h.blocksInImage * 4);
  await storage.read(raw, h.offsetBmap);
  const v = viewOf(raw);
  const bmap = new Uint32Array(h.blocksInImage);
  const bad = new Map<number, string>();
  for (let b = 0; b < bmap.length; b++) {
    const e = v.getUint32(b * 4, true);
    bmap[b] = e;
    if (e >= ZERO_BLOCK) continue;
    const end = h.offsetData + (e + 1) * h.blockSize;
    // Reported by check and by any access to the block, so that check can still run.
    if (end > fileSize) {
      bad.set(
        b,
        `block map entry ${b} (index ${e}) points past the end of file (block ends at ${end}, file size ${fileSize})`,
      );
    }
  }
  let backing: { name: string; format?: string } | undefined;
  if (h.type === TYPE_DIFF) {
    if (isNullUuid(h.uuidLink)) throw corrupt(file, 'differencing VDI has a null parent UUID');
    backing = { name: await findParent(storage, ctx, h), format: 'vdi' };
  }
  const parentIdentity = async (name: string): Promise<ParentIdentity> => {
    const s = await ctx.openSibling(name);
    try {
      const id = await identity(s);
      if (!id)
        throw unsupported(
          `${file}: the new parent ${name} is not a VDI; a differencing VDI needs a VDI parent`,
        );
      return id;
    } finally {
      await s.close().catch(() => undefined);
    }
  };
  const disk = new VdiDisk({
    storage,
    header: h,
    bmap,
    bad,
    readOnly: ctx.readOnly,
    backing,
    parentIdentity,
  });
  return { disk, backing };
}

// ---- create ----

const KNOWN = ['subformat', 'static', 'preallocation'];

async function create(ctx: CreateContext): Promise<void> {
  const o = ctx.options;
  for (const k of Object.keys(o)) {
    if (!KNOWN.includes(k)) throw invalid(`vdi: unknown option '${k}' (known: ${KNOWN.join(', ')})`);
  }
  const prealloc = o.preallocation ?? 'off';
  if (!['off', 'metadata', 'falloc', 'full'].includes(prealloc)) {
    throw invalid(`vdi: preallocation must be off, metadata, falloc or full (got '${prealloc}')`);
  }
  if (o.static !== undefined && !['on', 'off'].includes(o.static))
    throw invalid(`vdi: static must be on or off (got '${o.static}')`);
  if (o.subformat !== undefined && !['static', 'dynamic'].includes(o.subformat)) {
    throw invalid(`vdi: subformat must be static or dynamic (got '${o.subformat}')`);
  }
  const thick = prealloc === 'falloc' || prealloc === 'full';
  const isStatic = o.subformat === 'static' || o.static === 'on' || (thick && o.subformat === undefined);
  if (o.subformat === 'dynamic' && (o.static === 'on' || thick)) {
    throw invalid('vdi: subformat=dynamic contradicts static=on / preallocation');
  }
  if (ctx.backing && isStatic) throw invalid('vdi: a differencing VDI (-b) cannot be static');
  const size = alignUp(ctx.size, 512);
  if (size <= 0 || size > MAX_VDI_SIZE) throw invalid(`vdi: size ${ctx.size} is out of range`);
  const bs = DEFAULT_BLOCK_SIZE;
  const blocks = blocksFor(ctx.storage.name, size, bs);
  const offsetBmap = HEADER_BYTES;
  const offsetData = offsetBmap + mapBytes(blocks);

  let type = isStatic ? TYPE_STATIC : TYPE_DYNAMIC;
  let uuidLink = new Uint8Array(16);
  let uuidParentModify = new Uint8Array(16);
  let comment = '';
  if (ctx.backing) {
    if (ctx.backing.format !== 'vdi') {
      throw unsupported(
        `vdi: a differencing VDI needs a VDI parent (${ctx.backing.name} is ${ctx.backing.format})`,
      );
    }
    const ps = ctx.backing.disk.storages[0];
    const id = ps ? await identity(ps) : undefined;
    if (!id) throw unsupported(`vdi: cannot read the parent ${ctx.backing.name}'s VDI header`);
    type = TYPE_DIFF;
    uuidLink = new Uint8Array(id.uuidImage);
    uuidParentModify = new Uint8Array(id.uuidModify);
    comment = commentWithParent('', ctx.backing.name);
  }
  const geometry = new Uint8Array(32);
  const h: VdiHeader = {
    headerSize: 400,
    type,
    flags: 0,
    comment,
    offsetBmap,
    offsetData,
    sectorSize: 512,
    diskSize: size,
    blockSize: bs,
    blockExtra: 0,
    blocksInImage: blocks,
    blocksAllocated: isStatic ? blocks : 0,
    uuidImage: newUuid('guid'),
    uuidModify: newUuid('guid'),
    uuidLink,
    uuidParentModify,
    geometry,
  };
  viewOf(geometry).setUint32(12, 512, true); // legacy geometry's sector size
  viewOf(geometry).setUint32(28, 512, true); // LCHS sector size
  const map = new Uint8Array(offsetData - offsetBmap);
  const mv = viewOf(map);
  for (let b = 0; b < blocks; b++) mv.setUint32(b * 4, isStatic ? b : UNALLOCATED, true);
  await ctx.storage.write(serializeHeader(h), 0);
  await ctx.storage.write(map, offsetBmap);
  if (!isStatic) return;
  const end = offsetData + blocks * bs;
  await ctx.storage.truncate(end);
  if (prealloc === 'falloc' && ctx.storage.allocate) await ctx.storage.allocate(offsetData, blocks * bs);
  else if (prealloc === 'full') {
    const zeros = new Uint8Array(bs);
    for (let p = offsetData; p < end; p += bs) await ctx.storage.write(zeros, p);
  }
}

export const vdi: FormatDriver = {
  name: 'vdi',
  probe,
  open,
  create,
  capabilities: { create: true, write: true, backing: true, compression: false, snapshots: false },
};
