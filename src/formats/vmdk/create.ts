/**
 * Creating VMDKs with qemu-img's options (-o subformat=, adapter_type=,
 * hwversion=, compat6=, zeroed_grain=, preallocation=, toolsversion=) and
 * one of platter's own: cluster_size= (grain size of sparse subformats).
 *
 *   subformat             files                        extents
 *   monolithicSparse      NAME.vmdk                    1 SPARSE, descriptor embedded
 *   monolithicFlat        NAME.vmdk + NAME-flat.vmdk   1 FLAT
 *   twoGbMaxExtentSparse  NAME.vmdk + NAME-s001.vmdk…  SPARSE, 2 GiB each (qemu-img's size)
 *   twoGbMaxExtentFlat    NAME.vmdk + NAME-f001.vmdk…  FLAT, 2 GiB each
 *   streamOptimized       NAME.vmdk                    1 SPARSE, compressed, version 3,
 *                                                      GD_AT_END + footer + EOS
 */
import { alignUp, parseSize } from '../../core/bytes.js';
import { invalid } from '../../core/errors.js';
import { type Storage, writeZerosTo } from '../../core/storage.js';
import type { CreateContext } from '../driver.js';
import { Descriptor, type ExtentLine, NO_PARENT, parseCid } from './descriptor.js';
import {
  COMPRESS_DEFLATE,
  FLAG_COMPRESSED,
  FLAG_MARKERS,
  FLAG_NL_DETECT,
  MARKER_EOS,
  MARKER_FOOTER,
  MARKER_GD,
  metadataMarker,
  SECTOR,
  type SparseHeader,
  serializeHeader,
} from './header.js';
import { baseName } from './image.js';
import { sparseLayout, u32Bytes, writeSparseLayout } from './sparse.js';

export const SUBFORMATS = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
] as const;
export type Subformat = (typeof SUBFORMATS)[number];
const ADAPTERS = ['ide', 'lsilogic', 'buslogic', 'legacyESX'];
const KNOWN = new Set([
  'subformat',
  'adapter_type',
  'hwversion',
  'compat6',
  'zeroed_grain',
  'preallocation',
  'toolsversion',
  'cluster_size',
  'backing_fmt',
  'nocow',
  'extent_size_hint',
]);

/** Extent size of the twoGbMaxExtent subformats, in sectors (qemu-img; VMware uses 4192256). */
export const SPLIT_SECTORS = 4194304;
/** Sectors reserved for an embedded descriptor (qemu-img's size). */
const DESC_SECTORS = 20;
const DEFAULT_GRAIN = 128;

export interface VmdkCreateOptions {
  subformat: Subformat;
  adapterType: string;
  hwVersion: string;
  toolsVersion: string;
  zeroGrain: boolean;
  preallocation: 'off' | 'metadata' | 'falloc' | 'full';
  grainSectors: number;
}

function onOff(v: string | undefined, key: string): boolean {
  if (v === undefined || v === 'off' || v === 'false' || v === 'no') return false;
  if (v === 'on' || v === 'true' || v === 'yes') return true;
  throw invalid(`vmdk: ${key} must be on or off, not '${v}'`);
}

export function parseCreateOptions(o: Readonly<Record<string, string>>): VmdkCreateOptions {
  for (const k of Object.keys(o))
    if (!KNOWN.has(k)) throw invalid(`vmdk: unknown option '${k}' (known: ${[...KNOWN].join(', ')})`);
  const subformat = (o.subformat ?? 'monolithicSparse') as Subformat;
  if (!SUBFORMATS.includes(subformat))
    throw invalid(`vmdk: unknown subformat '${o.subformat}' (known: ${SUBFORMATS.join(', ')})`);
  const adapterType = o.adapter_type ?? 'ide';
  if (!ADAPTERS.includes(adapterType))
    throw invalid(`vmdk: unknown adapter_type '${adapterType}' (known: ${ADAPTERS.join(', ')})`);
  const compat6 = onOff(o.compat6, 'compat6');
  if (compat6 && o.hwversion !== undefined)
    throw invalid('vmdk: compat6 and hwversion cannot be given together');
  const hwVersion = compat6 ? '6' : (o.hwversion ?? '4');
  if (!/^\d+$/.test(hwVersion)) throw invalid(`vmdk: hwversion must be a number, not '${hwVersion}'`);
  const preallocation = (o.preallocation ?? 'off') as VmdkCreateOptions['preallocation'];
  if (!['off', 'metadata', 'falloc', 'full'].includes(preallocation)) {
    throw invalid(`vmdk: preallocation must be off, metadata, falloc or full, not '${preallocation}'`);
  }
  const zeroGrain = onOff(o.zeroed_grain, 'zeroed_grain');
  let grainSectors = DEFAULT_GRAIN;
  if (o.cluster_size !== undefined) {
    const n = parseSize(o.cluster_size, 'cluster_size');
    // Sparse extent header, grainSize: "a power of 2 and greater than 8" sectors
    // (VMDK spec 5.0, "Hosted Sparse Extent Header"); libvmdk refuses 8.
    if (!Number.isInteger(n) || n < 8192 || n > 1 << 20 || (n & (n - 1)) !== 0) {
      throw invalid(`vmdk: cluster_size must be a power of two from 8K to 1M, not '${o.cluster_size}'`);
    }
    grainSectors = n / SECTOR;
  }
  if (subformat === 'streamOptimized') {
    if (preallocation !== 'off') throw invalid('vmdk: streamOptimized images cannot be preallocated');
    if (zeroGrain) throw invalid('vmdk: zeroed_grain is not available for streamOptimized images');
  }
  if (o.backing_fmt !== undefined && o.backing_fmt !== 'vmdk')
    throw invalid(`vmdk: backing_fmt must be vmdk, not '${o.backing_fmt}'`);
  return {
    subformat,
    adapterType,
    hwVersion,
    toolsVersion: o.toolsversion ?? '2147483647',
    zeroGrain,
    preallocation,
    grainSectors,
  };
}

/** ddb lines as qemu-img writes them (heads 16 for IDE, 255 otherwise; 63 sectors per track). */
export function ddbFor(o: VmdkCreateOptions, capacitySectors: number): Array<[string, string]> {
  const heads = o.adapterType === 'ide' ? 16 : 255;
  return [
    ['ddb.virtualHWVersion', o.hwVersion],
    ['ddb.geometry.cylinders', String(Math.floor(capacitySectors / (heads * 63)))],
    ['ddb.geometry.heads', String(heads)],
    ['ddb.geometry.sectors', '63'],
    ['ddb.adapterType', o.adapterType],
    ['ddb.toolsVersion', o.toolsVersion],
  ];
}

export function randomCid(): number {
  for (;;) {
    const c = Math.floor(Math.random() * 0x100000000) >>> 0;
    if (c < 0xfffffffe) return c;
  }
}

export async function createVmdk(ctx: CreateContext): Promise<void> {
  const o = parseCreateOptions(ctx.options);
  const capacity = Math.ceil(ctx.size / SECTOR);
  if (capacity === 0) throw invalid('vmdk: size must be at least one sector');
  let parentCid = NO_PARENT;
  let hint: string | undefined;
  if (ctx.backing) {
    if (o.subformat === 'streamOptimized')
      throw invalid('vmdk: a streamOptimized image cannot have a backing file');
    if (ctx.backing.format !== 'vmdk')
      throw invalid(`vmdk: the backing file must be a VMDK, not ${ctx.backing.format}`);
    const info = await ctx.backing.disk.info();
    parentCid = parseCid(String(info.details?.cid ?? ''), 'CID', ctx.backing.name);
    hint = ctx.backing.name;
  }
  // convert fills DST.partial and renames it: the embedded extent line names the final file.
  const name = baseName(ctx.storage.name).replace(/\.partial$/, '');
  const stem = name.replace(/\.vmdk$/i, '');
  const extents: ExtentLine[] = [];
  const desc = (ext: ExtentLine[]): Descriptor =>
    Descriptor.create({
      cid: randomCid(),
      parentCid,
      createType: o.subformat,
      parentFileNameHint: hint,
      extents: ext,
      ddb: ddbFor(o, capacity),
    });

  switch (o.subformat) {
    case 'monolithicSparse': {
      const d = desc([{ access: 'RW', sectors: capacity, type: 'SPARSE', file: name, offsetSectors: 0 }]);
      await createSparseFile(ctx.storage, capacity, o, d.serialize());
      return;
    }
    case 'streamOptimized': {
      const d = desc([{ access: 'RW', sectors: capacity, type: 'SPARSE', file: name, offsetSectors: 0 }]);
      await createStream(ctx.storage, capacity, o.grainSectors, d.serialize());
      return;
    }
    case 'monolithicFlat':
    case 'twoGbMaxExtentFlat':
    case 'twoGbMaxExtentSparse': {
      const split = o.subformat !== 'monolithicFlat';
      const sparse = o.subformat === 'twoGbMaxExtentSparse';
      const per = split ? SPLIT_SECTORS : capacity;
      for (let i = 0, at = 0; at < capacity; i++, at += per) {
        const sectors = Math.min(per, capacity - at);
        const file = split
          ? `${stem}-${sparse ? 's' : 'f'}${String(i + 1).padStart(3, '0')}.vmdk`
          : `${stem}-flat.vmdk`;
        const st = await ctx.createSibling(file);
        try {
          if (sparse) await createSparseFile(st, sectors, o, '');
          else await createFlatFile(st, sectors * SECTOR, o.preallocation);
          await st.flush();
        } finally {
          await st.close();
        }
        extents.push({ access: 'RW', sectors, type: sparse ? 'SPARSE' : 'FLAT', file, offsetSectors: 0 });
      }
      const text = new TextEncoder().encode(desc(extents).serialize());
      await ctx.storage.write(text, 0);
      return;
    }
    default: {
      const never: never = o.subformat;
      throw invalid(`vmdk: subformat ${never}`);
    }
  }
}

export async function createFlatFile(
  st: Storage,
  bytes: number,
  prealloc: VmdkCreateOptions['preallocation'],
): Promise<void> {
  await st.truncate(bytes);
  if (prealloc === 'falloc' && st.allocate) await st.allocate(0, bytes);
  if (prealloc === 'full') await writeZerosTo(st, 0, bytes, 4 << 20);
}

/** A sparse extent as qemu-img lays it out: header, descriptor space, RGD + GTs, GD + GTs, grains. */
export async function createSparseFile(
  st: Storage,
  capacity: number,
  o: VmdkCreateOptions,
  descText: string,
): Promise<void> {
  const text = new TextEncoder().encode(descText);
  const descSectors = Math.max(DESC_SECTORS, alignUp(text.length, SECTOR) / SECTOR);
  const layout = sparseLayout({
    capacitySectors: capacity,
    grainSectors: o.grainSectors,
    descriptorSectors: descSectors,
    zeroGrain: o.zeroGrain,
  });
  await writeSparseLayout(st, layout);
  if (text.length) await st.write(text, SECTOR);
  if (o.preallocation !== 'falloc' && o.preallocation !== 'full') return;
  // Every grain allocated, in order, after the metadata.
  const h = layout.header;
  const grains = Math.ceil(capacity / h.grainSectors);
  const perGT = h.numGTEsPerGT;
  for (let ti = 0; ti < layout.gd.length; ti++) {
    const n = Math.min(perGT, grains - ti * perGT);
    const gt = new Uint32Array(perGT);
    for (let j = 0; j < n; j++) gt[j] = h.overHeadSectors + (ti * perGT + j) * h.grainSectors;
    const bytes = u32Bytes(gt);
    await st.write(bytes, layout.gd[ti] * SECTOR);
    await st.write(bytes, layout.rgd[ti] * SECTOR);
  }
  const dataBytes = grains * h.grainSectors * SECTOR;
  await st.truncate(h.overHeadSectors * SECTOR + dataBytes);
  if (o.preallocation === 'falloc' && st.allocate) await st.allocate(h.overHeadSectors * SECTOR, dataBytes);
  if (o.preallocation === 'full') await writeZerosTo(st, h.overHeadSectors * SECTOR, dataBytes, 4 << 20);
}

/** An empty streamOptimized file: header (GD_AT_END), descriptor, empty GD, footer, end-of-stream marker. */
export async function createStream(
  st: Storage,
  capacity: number,
  grainSectors: number,
  descText: string,
): Promise<void> {
  const text = new TextEncoder().encode(descText);
  const descSectors = Math.max(DESC_SECTORS, alignUp(text.length, SECTOR) / SECTOR);
  const overHead = alignUp(1 + descSectors, grainSectors);
  const numGTs = Math.ceil(capacity / (grainSectors * 512));
  const gdSectors = Math.max(1, alignUp(numGTs * 4, SECTOR) / SECTOR);
  const header: SparseHeader = {
    version: 3,
    flags: FLAG_NL_DETECT | FLAG_COMPRESSED | FLAG_MARKERS,
    capacitySectors: capacity,
    grainSectors,
    descriptorOffsetSectors: 1,
    descriptorSizeSectors: descSectors,
    numGTEsPerGT: 512,
    rgdOffsetSectors: 0,
    gdOffsetSectors: -1,
    overHeadSectors: overHead,
    uncleanShutdown: 0,
    compressAlgorithm: COMPRESS_DEFLATE,
  };
  const gdAt = overHead + 1;
  const total = (gdAt + gdSectors + 3) * SECTOR;
  const buf = new Uint8Array(total);
  buf.set(serializeHeader(header), 0);
  buf.set(text, SECTOR);
  buf.set(metadataMarker(MARKER_GD, gdSectors), overHead * SECTOR);
  // The GD stays all zero: no grain tables yet.
  let at = (gdAt + gdSectors) * SECTOR;
  buf.set(metadataMarker(MARKER_FOOTER, 1), at);
  at += SECTOR;
  buf.set(serializeHeader({ ...header, gdOffsetSectors: gdAt }), at);
  at += SECTOR;
  buf.set(metadataMarker(MARKER_EOS, 0), at);
  await st.write(buf, 0);
}
