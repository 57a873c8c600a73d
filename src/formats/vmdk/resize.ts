/**
 * resize for every subformat (qemu-img cannot resize VMDKs):
 * - sparse extent (monolithicSparse, streamOptimized, the last extent of a
 *   split set): SparseExtent.resize (a relocated, larger grain directory);
 * - FLAT extent: the file is truncated or extended;
 * - split sets: the last extent grows to the set's extent size, then new
 *   extents NAME-s00N / NAME-f00N are added; shrinking removes whole extents.
 * The descriptor's extent lines and ddb.geometry.cylinders follow. The Disk
 * must be reopened afterwards.
 */
import { invalid, unsupported } from '../../core/errors.js';
import { createFlatFile, createSparseFile, parseCreateOptions, SPLIT_SECTORS } from './create.js';
import type { ExtentLine } from './descriptor.js';
import { FlatExtent } from './flat.js';
import { SECTOR } from './header.js';
import { baseName, type VmdkImage } from './image.js';
import { SparseExtent } from './sparse.js';

export async function resizeImage(
  image: VmdkImage,
  newSize: number,
  opts: { shrink: boolean },
): Promise<void> {
  const newSectors = Math.ceil(newSize / SECTOR);
  if (newSectors <= 0) throw invalid(`${image.file}: the new size must be at least one sector`);
  const oldSectors = image.table.size / SECTOR;
  if (newSectors < oldSectors && !opts.shrink) {
    throw invalid(
      `${image.file}: shrinking from ${image.table.size} to ${newSectors * SECTOR} bytes loses data; use --shrink`,
    );
  }
  if (newSectors === oldSectors) return;
  await image.renewCid();
  const d = image.descriptor;
  const placed = image.table.placed;

  if (image.home.embedded) {
    const ext = placed[0].extent as SparseExtent;
    await ext.resize(newSectors);
    if (d.extents.length === 1) d.extents[0].sectors = newSectors;
  } else {
    const lines = d.extents;
    if (lines.length !== placed.length) throw new Error('internal error: extent table and descriptor differ');
    const split = lines.length > 1 || /^twoGbMaxExtent/.test(d.get('createType') ?? '');
    const per =
      lines.length > 1
        ? Math.max(...lines.map((l) => l.sectors))
        : split
          ? SPLIT_SECTORS
          : Number.MAX_SAFE_INTEGER;
    // Shrink: drop whole extents past the new end.
    let total = lines.reduce((n, l) => n + l.sectors, 0);
    while (lines.length > 1 && total - lines[lines.length - 1].sectors >= newSectors) {
      const l = lines.pop() as ExtentLine;
      const p = placed.pop();
      total -= l.sectors;
      await p?.extent.close();
      if (l.file) await image.ctx.host.remove(image.ctx.host.resolve(image.file, l.file));
    }
    // The last extent takes what it can.
    const last = lines[lines.length - 1];
    const lastPlaced = placed[placed.length - 1];
    const want = Math.min(per, newSectors - (total - last.sectors));
    await resizeExtent(image, last, lastPlaced.extent, want);
    total += want - last.sectors;
    last.sectors = want;
    // Grow: new extents named like the last one.
    while (total < newSectors) {
      if (!split) throw new Error('internal error: a single extent took less than asked');
      const sectors = Math.min(per, newSectors - total);
      const line = await addExtent(image, last, lines.length + 1, sectors);
      lines.push(line);
      total += sectors;
    }
  }
  const heads = Number(d.get('ddb.geometry.heads') ?? 0);
  const spt = Number(d.get('ddb.geometry.sectors') ?? 0);
  if (d.get('ddb.geometry.cylinders') !== undefined && heads > 0 && spt > 0) {
    d.set('ddb.geometry.cylinders', String(Math.floor(newSectors / (heads * spt))));
  }
  await image.saveDescriptor();
}

async function resizeExtent(
  image: VmdkImage,
  line: ExtentLine,
  ext: unknown,
  sectors: number,
): Promise<void> {
  if (ext instanceof SparseExtent) return ext.resize(sectors);
  if (ext instanceof FlatExtent && line.type === 'FLAT') {
    const st = ext.storage;
    const end = (line.offsetSectors + line.sectors) * SECTOR;
    if ((await st.size()) > end)
      throw unsupported(`${line.file}: the flat extent is followed by other data; cannot resize it`);
    await st.truncate((line.offsetSectors + sectors) * SECTOR);
    return;
  }
  throw unsupported(`${image.file}: cannot resize a ${line.type} extent`);
}

async function addExtent(
  image: VmdkImage,
  like: ExtentLine,
  index: number,
  sectors: number,
): Promise<ExtentLine> {
  const sparse = like.type === 'SPARSE';
  const m = /^(.*-)[sf]\d{3,}\.vmdk$/i.exec(like.file ?? '');
  const stem = m ? m[1] : `${baseName(image.file).replace(/\.vmdk$/i, '')}-`;
  const file = `${stem}${sparse ? 's' : 'f'}${String(index).padStart(3, '0')}.vmdk`;
  const host = image.ctx.host;
  const path = host.resolve(image.file, file);
  const st = await host.create(path, { lock: image.ctx.forceShare ? 'none' : 'auto' });
  try {
    if (sparse) {
      const grain = image.sparse[0]?.header.grainSectors ?? 128;
      await createSparseFile(st, sectors, { ...parseCreateOptions({}), grainSectors: grain }, '');
    } else await createFlatFile(st, sectors * SECTOR, 'off');
    await st.flush();
  } catch (e) {
    await st.close();
    await host.remove(path).catch(() => undefined);
    throw e;
  }
  await st.close();
  return { access: 'RW', sectors, type: sparse ? 'SPARSE' : 'FLAT', file, offsetSectors: 0 };
}
