/**
 * resizeDisk(disk, size): grow (or, with shrink, cut) the top layer through
 * disk.features.resize. The size argument may be absolute or relative
 * (+SIZE / -SIZE). The Disk must be reopened afterwards.
 */
import { parseSize } from '../core/bytes.js';
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
