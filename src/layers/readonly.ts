/**
 * readonly(disk): the same Disk with every write refused (EREADONLY) by
 * toDisk(); reads, extents and info pass through. Closing it closes `disk`.
 */
import { type Disk, toDisk } from '../core/disk.js';

export function readonly(disk: Disk): Disk {
  return toDisk(
    {
      size: disk.size,
      granularity: disk.granularity,
      storages: disk.storages,
      features: {},
      read: (buf, offset) => disk.read(buf, offset),
      extents: (offset, length) => disk.extents(offset, length),
      // Only `read` is asked of a read-only view (toDisk answers null for the rest).
      hostSpans: (offset, length, purpose) => disk.hostSpans(offset, length, purpose),
      // Nothing written through this view; a flush has nothing to persist.
      async flush() {},
      close: () => disk.close(),
      info: () => disk.info(),
    },
    { name: disk.name, readOnly: true, layers: disk.layers },
  );
}
