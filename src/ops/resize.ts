/**
 * resizeDisk(disk, size): grow (or, with shrink, cut) the top layer through
 * disk.features.resize. The size argument may be absolute or relative
 * (+SIZE / -SIZE). The Disk must be reopened afterwards.
 *
 * resizeImage(open, size): the same for an image and its backing chain, then
 * the grown range reads as zeros, whatever lies below it (as qemu-img does).
 */
import { alignUp, parseSize } from '../core/bytes.js';
import type { Disk } from '../core/disk.js';
import { invalid, PlatterError } from '../core/errors.js';

/** "+1G" / "-512M" / "10G" relative to `current`. */
export function targetSize(current: number, text: string): number {
  const sign = text.startsWith('+') ? 1 : text.startsWith('-') ? -1 : 0;
  const n = parseSize(sign ? text.slice(1) : text);
  const size = sign === 0 ? n : current + sign * n;
  if (size < 0) throw invalid(`new size ${text} would be negative (current size ${current})`);
  return size;
}

export async function resizeDisk(
  disk: Disk,
  newSize: number,
  opts: { shrink?: boolean } = {},
): Promise<void> {
  const resize = disk.features.resize;
  if (!resize) {
    const { format } = await disk.info();
    throw new PlatterError('EUNSUPPORTED', `${disk.name}: platter cannot resize ${format} images`);
  }
  if (newSize < disk.size && !opts.shrink) {
    throw invalid(
      `${disk.name}: shrinking from ${disk.size} to ${newSize} bytes may lose data; use --shrink to allow it`,
    );
  }
  if (newSize === disk.size) return;
  await resize(newSize, { shrink: opts.shrink ?? false });
  await disk.flush();
}

/**
 * Resizes the image that `open` opens with its backing chain (the Disk it gives
 * must be fresh each time: a Disk keeps the size it was opened with).
 *
 * A grown range must read as zeros. Two things could show through instead:
 * - the backing file, where it is larger than the old size: the new range is
 *   written as zeros over it;
 * - the image's own last granule, when a shrink left data past its end in a
 *   granule it kept (VMDK grains): those bytes are zeroed.
 */
export async function resizeImage(
  open: () => Promise<Disk>,
  sizeText: string,
  opts: { shrink?: boolean } = {},
): Promise<{ oldSize: number; newSize: number }> {
  let disk = await open();
  const oldSize = disk.size;
  const belowSize = disk.layers.length > 1 ? disk.layers[1].size : 0;
  let newSize: number;
  try {
    newSize = targetSize(oldSize, sizeText);
    await resizeDisk(disk, newSize, opts);
  } finally {
    await disk.close();
  }
  const shown = Math.min(newSize, belowSize);
  const tail = Math.min(newSize, alignUp(oldSize, disk.granularity));
  if (shown <= oldSize && tail <= oldSize) return { oldSize, newSize };
  disk = await open();
  try {
    if (shown > oldSize) await disk.writeZeroes(oldSize, shown - oldSize);
    const from = Math.max(oldSize, shown);
    if (tail > from) {
      for (const e of await disk.extents(from, tail - from))
        if (e.depth === 0 && e.status === 'data') await disk.writeZeroes(e.offset, e.length);
    }
    await disk.flush();
  } finally {
    await disk.close();
  }
  return { oldSize, newSize };
}
