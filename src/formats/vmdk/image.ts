/**
 * Opening a VMDK: find the descriptor (embedded in a sparse extent, or a file of
 * its own), open every extent it names, check that they agree with it, and
 * present them as one DiskImpl. The CID is renewed on the first write, as
 * VMware and QEMU do, so that delta links made on an older state can tell.
 */
import type { DiskImpl, FormatInfo } from '../../core/disk.js';
import { corrupt, invalid, PlatterError, unsupported } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import type { OpenContext } from '../driver.js';
import { Descriptor, hex8, looksLikeDescriptor, MAX_DESCRIPTOR, NO_PARENT, parseCid } from './descriptor.js';
import { FlatExtent, NoAccessExtent, ZeroExtent } from './flat.js';
import { COWD_MAGIC, MAGIC, SECTOR } from './header.js';
import { SparseExtent } from './sparse.js';
import { ExtentTable, type Placed, type VmdkExtent } from './table.js';

const FLAT_TYPES = new Set([
  'monolithicFlat',
  'twoGbMaxExtentFlat',
  'vmfs',
  'vmfsPreallocated',
  'vmfsEagerZeroedThick',
]);
const SPARSE_TYPES = new Set([
  'monolithicSparse',
  'twoGbMaxExtentSparse',
  'streamOptimized',
  'vmfsSparse',
  'vmfsThin',
]);

export function baseName(path: string): string {
  return path.slice(path.lastIndexOf('/') + 1);
}

/** Where the descriptor lives, for rewriting it. */
type DescriptorHome = ({ embedded: true; offset: number; space: number } | { embedded: false }) & {
  /** The text was valid UTF-8 (else it is kept byte for byte as Latin-1). */
  utf8: boolean;
};

/** Descriptors are UTF-8 (encoding="UTF-8") or, in old ones, a single-byte code page: keep those bytes as they are. */
function decodeText(raw: Uint8Array): { text: string; utf8: boolean } {
  try {
    return { text: new TextDecoder('utf-8', { fatal: true }).decode(raw), utf8: true };
  } catch {
    return { text: Buffer.from(raw.buffer, raw.byteOffset, raw.byteLength).toString('latin1'), utf8: false };
  }
}

function encodeText(text: string, utf8: boolean): Uint8Array {
  return utf8 ? new TextEncoder().encode(text) : Buffer.from(text, 'latin1');
}

export class VmdkImage {
  readonly table: ExtentTable;
  private cidRenewed = false;

  constructor(
    readonly file: string,
    readonly storage: Storage,
    readonly descriptor: Descriptor,
    readonly home: DescriptorHome,
    placed: Placed[],
    readonly ctx: OpenContext,
  ) {
    this.table = new ExtentTable(placed);
  }

  get createType(): string {
    const t = this.descriptor.get('createType');
    const first = this.table.placed[0]?.extent;
    if (this.home.embedded && first instanceof SparseExtent && first.compressed) return 'streamOptimized';
    return t ?? 'monolithicSparse';
  }

  get sparse(): SparseExtent[] {
    return this.table.placed.flatMap((p) => (p.extent instanceof SparseExtent ? [p.extent] : []));
  }

  /** Writes the descriptor back where it came from. */
  async saveDescriptor(): Promise<void> {
    if (this.home.embedded && !this.descriptor.fromFile) return; // none to keep up to date
    const text = encodeText(this.descriptor.serialize(), this.home.utf8);
    if (this.home.embedded) {
      if (text.length > this.home.space) {
        throw unsupported(
          `${this.file}: the descriptor (${text.length} bytes) no longer fits its space (${this.home.space} bytes)`,
        );
      }
      const buf = new Uint8Array(this.home.space);
      buf.set(text);
      await this.storage.write(buf, this.home.offset);
    } else {
      await this.storage.write(text, 0);
      await this.storage.truncate(text.length);
    }
  }

  /** A new CID before the first change (VMware: "content ID changes whenever the content changes"). */
  async renewCid(): Promise<void> {
    if (this.cidRenewed) return;
    this.cidRenewed = true;
    // A sparse extent opened on its own (NAME-s001.vmdk) has no descriptor to renew.
    if (this.home.embedded && !this.descriptor.fromFile) return;
    const old = parseCid(this.descriptor.get('CID'), 'CID', this.file);
    let cid = old;
    while (cid === old || cid >= 0xfffffffe) cid = Math.floor(Math.random() * 0x100000000) >>> 0;
    this.descriptor.set('CID', hex8(cid), false);
    await this.saveDescriptor();
  }

  async info(): Promise<FormatInfo> {
    const d = this.descriptor;
    const sparse = this.sparse;
    const hint = d.get('parentFileNameHint');
    return {
      format: 'vmdk',
      subformat: this.createType,
      granularity: sparse.length > 0 ? sparse[0].grainBytes : undefined,
      backing: hint ? { name: hint, format: 'vmdk' } : undefined,
      details: Object.fromEntries(
        Object.entries({
          cid: d.get('CID'),
          parentCid: d.get('parentCID'),
          adapterType: d.get('ddb.adapterType'),
          hwVersion: d.get('ddb.virtualHWVersion'),
          version: sparse[0]?.header.version,
          compressed: sparse.some((s) => s.compressed) || undefined,
          zeroedGrain: sparse.some((s) => s.zeroGrain) || undefined,
          extents: d.extents.map((e) => ({
            access: e.access,
            type: e.type,
            ...(e.file === undefined ? {} : { file: e.file }),
            size: e.sectors * SECTOR,
            offset: e.offsetSectors * SECTOR,
          })),
        }).filter(([, v]) => v !== undefined),
      ),
    };
  }

  /**
   * After a commit the parent has a new CID (its content changed): keeps this
   * child, now empty, linked to it, as VHDX's makeEmpty renews parent_linkage.
   * Only the parent's descriptor is read, without a lock: commit holds the
   * parent open for writing meanwhile.
   */
  async relinkParent(): Promise<void> {
    const d = this.descriptor;
    const hint = d.get('parentFileNameHint');
    if (!hint || parseCid(d.get('parentCID'), 'parentCID', this.file) === NO_PARENT) return;
    const host = this.ctx.host;
    const parent = await host.open(host.resolve(this.file, hint), { write: false, lock: 'none' });
    let cid: number | undefined;
    try {
      cid = await readCid(parent);
    } finally {
      await parent.close();
    }
    if (cid === undefined || hex8(cid) === d.get('parentCID')) return;
    d.set('parentCID', hex8(cid), false);
    await this.saveDescriptor();
  }

  /** Records a new parent (its CID becomes our parentCID) or none. */
  async setBacking(backing: { name: string; format?: string } | null): Promise<void> {
    const d = this.descriptor;
    if (backing === null) {
      d.delete('parentFileNameHint');
      d.set('parentCID', hex8(NO_PARENT), false);
    } else {
      if (backing.format !== undefined && backing.format !== 'vmdk') {
        throw invalid(`${this.file}: a VMDK's parent must be a VMDK, not ${backing.format}`);
      }
      const parent = await this.ctx.openSibling(backing.name, { write: false });
      let cid: number | undefined;
      try {
        cid = await readCid(parent);
      } finally {
        await parent.close();
      }
      if (cid === undefined)
        throw invalid(`${backing.name}: not a VMDK (no CID), cannot be the parent of ${this.file}`);
      d.set('parentCID', hex8(cid), false);
      d.set('parentFileNameHint', backing.name);
    }
    await this.saveDescriptor();
  }

  async close(): Promise<void> {
    try {
      await this.table.close();
    } finally {
      await this.storage.close();
    }
  }
}

/** The CID a VMDK file declares (embedded or separate descriptor), for the parentCID check. */
export async function readCid(storage: Storage): Promise<number | undefined> {
  const found = await readDescriptorText(storage);
  if (!found?.text) return undefined;
  const m = /^\s*CID\s*=\s*"?([0-9a-fA-F]{1,8})"?\s*$/m.exec(found.text);
  return m ? Number.parseInt(m[1], 16) : undefined;
}

async function readDescriptorText(
  storage: Storage,
): Promise<{ text: string; home: DescriptorHome; sparse: boolean } | undefined> {
  const size = await storage.size();
  if (size < 4) return undefined;
  const head = new Uint8Array(Math.min(size, SECTOR));
  await storage.read(head, 0);
  const magic = new DataView(head.buffer, head.byteOffset, head.byteLength).getUint32(0, true);
  if (magic === MAGIC && head.length >= 44) {
    const v = new DataView(head.buffer, head.byteOffset, head.byteLength);
    const off = Number(v.getBigUint64(28, true)) * SECTOR;
    const space = Number(v.getBigUint64(36, true)) * SECTOR;
    if (off === 0 || space === 0)
      return { text: '', home: { embedded: true, offset: 0, space: 0, utf8: true }, sparse: true };
    if (space > MAX_DESCRIPTOR || off + space > size) {
      throw corrupt(
        storage.name,
        `embedded descriptor at ${off} (${space} bytes) is past end of file or too large (size ${size})`,
      );
    }
    const raw = new Uint8Array(space);
    await storage.read(raw, off);
    const nul = raw.indexOf(0);
    const { text, utf8 } = decodeText(nul < 0 ? raw : raw.subarray(0, nul));
    return { text, home: { embedded: true, offset: off, space, utf8 }, sparse: true };
  }
  if (!looksLikeDescriptor(head)) return undefined;
  if (size > MAX_DESCRIPTOR)
    throw corrupt(storage.name, `descriptor file is ${size} bytes (limit ${MAX_DESCRIPTOR})`);
  const raw = new Uint8Array(size);
  await storage.read(raw, 0);
  const { text, utf8 } = decodeText(raw);
  return { text, home: { embedded: false, utf8 }, sparse: false };
}

export async function probeVmdk(storage: Storage): Promise<number> {
  try {
    const size = await storage.size();
    if (size < 4) return 0;
    const head = new Uint8Array(Math.min(size, SECTOR));
    await storage.read(head, 0);
    const magic = new DataView(head.buffer).getUint32(0, true);
    if (magic === MAGIC || magic === COWD_MAGIC) return 100;
    return looksLikeDescriptor(head) ? 100 : 0;
  } catch {
    return 0;
  }
}

export async function openVmdk(
  storage: Storage,
  ctx: OpenContext,
): Promise<{ image: VmdkImage; disk: DiskImpl; backing?: { name: string; format: string } }> {
  const file = storage.name;
  const writable = !ctx.readOnly;
  const head = new Uint8Array(4);
  if ((await storage.size()) >= 4) await storage.read(head, 0);
  if (new DataView(head.buffer).getUint32(0, true) === COWD_MAGIC) {
    throw unsupported(`${file}: VMware 3 / vmfsSparse (COWD) extents are not supported`);
  }
  const found = await readDescriptorText(storage);
  if (!found)
    throw new PlatterError('EFORMAT', `${file}: not a VMDK image (no KDMV header and no descriptor)`);

  const placed: Placed[] = [];
  let descriptor: Descriptor;
  try {
    if (found.sparse) {
      const main = await SparseExtent.open(storage, file, writable, true);
      placed.push({ start: 0, extent: main, name: file });
      descriptor = found.text.trim()
        ? Descriptor.parse(found.text, file)
        : Descriptor.create({
            cid: 0xfffffffe,
            parentCid: NO_PARENT,
            createType: main.compressed ? 'streamOptimized' : 'monolithicSparse',
            extents: [
              {
                access: 'RW',
                sectors: main.header.capacitySectors,
                type: 'SPARSE',
                file: baseName(file),
                offsetSectors: 0,
              },
            ],
            ddb: [],
          });
      const exts = descriptor.extents;
      if (exts.length > 1) {
        throw corrupt(
          file,
          `the embedded descriptor lists ${exts.length} extents; a monolithic sparse file holds one`,
        );
      }
      if (exts.length === 1) {
        if (exts[0].type !== 'SPARSE')
          throw corrupt(file, `the embedded descriptor's extent is ${exts[0].type}, not SPARSE`);
        if (exts[0].sectors !== main.header.capacitySectors) {
          throw corrupt(
            file,
            `header capacity ${main.header.capacitySectors} sectors does not match the descriptor's extent size ${exts[0].sectors} sectors`,
          );
        }
      }
      checkCreateType(descriptor, file, true);
    } else {
      descriptor = Descriptor.parse(found.text, file);
      if (descriptor.get('createType') === undefined) throw corrupt(file, 'descriptor has no createType');
      parseCid(descriptor.get('CID'), 'CID', file);
      parseCid(descriptor.get('parentCID'), 'parentCID', file);
      if (descriptor.extents.length === 0) throw corrupt(file, 'descriptor lists no extents');
      checkCreateType(descriptor, file, false);
      let start = 0;
      for (const e of descriptor.extents) {
        const ext = await openExtent(e, file, ctx, writable);
        placed.push({ start, extent: ext, name: e.file ?? `${file} (ZERO extent)` });
        start += ext.size;
      }
    }
  } catch (e) {
    for (const p of placed) if (p.extent.storage !== storage) await p.extent.close().catch(() => undefined);
    throw e;
  }

  const image = new VmdkImage(file, storage, descriptor, found.home, placed, ctx);
  const compressOpt = ctx.options.compress;
  if (compressOpt === 'on' && writable && image.createType !== 'streamOptimized') {
    await image.close();
    throw invalid(`${file}: compression needs subformat=streamOptimized (this image is ${image.createType})`);
  }

  let backing: { name: string; format: string } | undefined;
  const hint = descriptor.get('parentFileNameHint');
  if (hint) {
    backing = { name: hint, format: 'vmdk' };
    try {
      await checkParentCid(image, hint);
    } catch (e) {
      await image.close();
      throw e;
    }
  }
  return { image, disk: imageDisk(image), backing };
}

function checkCreateType(d: Descriptor, file: string, embedded: boolean): void {
  const t = d.get('createType');
  if (t === undefined) return;
  const types = d.extents.map((e) => e.type);
  if (FLAT_TYPES.has(t) && types.some((x) => x !== 'FLAT' && x !== 'VMFS' && x !== 'ZERO')) {
    throw corrupt(file, `createType ${t} contradicts its ${types.find((x) => x !== 'FLAT')} extent`);
  }
  if (SPARSE_TYPES.has(t) && types.some((x) => x !== 'SPARSE' && x !== 'ZERO' && x !== 'VMFSSPARSE')) {
    throw corrupt(file, `createType ${t} contradicts its ${types.find((x) => x !== 'SPARSE')} extent`);
  }
  if (embedded && FLAT_TYPES.has(t)) throw corrupt(file, `createType ${t} in a sparse extent file`);
}

async function openSibling(ctx: OpenContext, file: string, name: string, write: boolean): Promise<Storage> {
  try {
    return await ctx.openSibling(name, { write });
  } catch (e) {
    if (e instanceof PlatterError && e.code === 'ENOENT') {
      throw new PlatterError('ENOENT', `${file}: extent file ${name} named in the descriptor is missing`);
    }
    throw e;
  }
}

async function openExtent(
  e: import('./descriptor.js').ExtentLine,
  file: string,
  ctx: OpenContext,
  writable: boolean,
): Promise<VmdkExtent> {
  const size = e.sectors * SECTOR;
  if (e.access === 'NOACCESS') return new NoAccessExtent(size, e.file ?? file);
  if (e.type === 'ZERO') return new ZeroExtent(size);
  const name = e.file as string;
  const w = writable && e.access === 'RW';
  switch (e.type) {
    case 'FLAT':
    case 'VMFS': {
      const st = await openSibling(ctx, file, name, w);
      const have = await st.size();
      const need = e.offsetSectors * SECTOR + size;
      if (have < need) {
        await st.close();
        throw corrupt(
          name,
          `flat extent is shorter than the descriptor says (size ${have}, needs ${need} for ${e.sectors} sectors at offset ${e.offsetSectors})`,
        );
      }
      return new FlatExtent(st, size, e.offsetSectors * SECTOR, w);
    }
    case 'SPARSE': {
      const st = await openSibling(ctx, file, name, w);
      let ext: SparseExtent;
      try {
        ext = await SparseExtent.open(st, name, w, false);
      } catch (err) {
        await st.close();
        throw err;
      }
      if (ext.size !== size) {
        await ext.close();
        throw corrupt(
          name,
          `capacity ${ext.size / SECTOR} sectors does not match the descriptor's extent size ${e.sectors} sectors`,
        );
      }
      return ext;
    }
    default:
      throw unsupported(`${file}: extent type ${e.type} (${name}) is not supported`);
  }
}

async function checkParentCid(image: VmdkImage, hint: string): Promise<void> {
  const want = parseCid(image.descriptor.get('parentCID'), 'parentCID', image.file);
  if (want === NO_PARENT) return;
  let parent: Storage;
  try {
    parent = await image.ctx.openSibling(hint, { write: false });
  } catch {
    return; // openImage reports a missing parent with its own message
  }
  let have: number | undefined;
  try {
    have = await readCid(parent);
  } finally {
    await parent.close();
  }
  if (have !== undefined && have !== want) {
    throw corrupt(
      image.file,
      `parentCID ${hex8(want)} does not match CID ${hex8(have)} of parent ${hint} (the parent changed after this delta link was made)`,
    );
  }
}

function imageDisk(image: VmdkImage): DiskImpl {
  const t = image.table;
  const writable = !image.ctx.readOnly;
  const granularity = Math.max(512, ...t.placed.map((p) => p.extent.granularity));
  return {
    size: t.size,
    granularity,
    storages: [
      image.storage,
      ...t.placed.flatMap((p) =>
        p.extent.storage && p.extent.storage !== image.storage ? [p.extent.storage] : [],
      ),
    ],
    read: (buf, offset) => t.read(buf, offset),
    write: writable
      ? async (buf, offset) => {
          await image.renewCid();
          await t.write(buf, offset);
        }
      : undefined,
    writeZeroes: writable
      ? async (offset, length, o) => {
          await image.renewCid();
          await t.writeZeroes(offset, length, o.mayUnmap);
        }
      : undefined,
    discard: writable
      ? async (offset, length) => {
          await image.renewCid();
          await t.discard(offset, length);
        }
      : undefined,
    extents: (offset, length) => t.extents(offset, length),
    flush: () => t.flush(),
    close: () => image.close(),
    info: () => image.info(),
  };
}
