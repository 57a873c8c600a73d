/**
 * Backing-chain surgery and resizing of a qcow2 image: what commit, rebase
 * and resize need (DiskFeatures.setBacking, makeEmpty, resize). New metadata
 * is written before the header points at it; old metadata is freed last.
 */
import { invalid, PlatterError } from '../../core/errors.js';
import { MAX_L1_BYTES } from './header.js';
import type { Qcow2Image } from './image.js';
import { addTreeRefcounts, readSnapshots } from './snapshots.js';

export async function setBacking(
  img: Qcow2Image,
  backing: { name: string; format?: string } | null,
): Promise<void> {
  img.checkWritable();
  await img.lock.run(async () => {
    const prev = img.h.backing;
    img.h.backing = backing ? { name: backing.name, format: backing.format } : undefined;
    try {
      await img.writeHeader();
    } catch (e) {
      img.h.backing = prev;
      throw e;
    }
    await img.storage.flush();
  });
}

/** Every cluster of the active image becomes unallocated (reads fall through to the backing). */
export async function makeEmpty(img: Qcow2Image): Promise<void> {
  img.checkWritable();
  await img.lock.run(async () => {
    await img.beginChange();
    const old = img.l1.slice();
    img.l1.fill(0);
    if (img.h.l1Size > 0) await img.storage.write(img.l1, img.h.l1Offset);
    await img.storage.flush();
    await addTreeRefcounts(img, old, -1);
    img.dropCaches();
  });
}

export async function resize(img: Qcow2Image, newSize: number, opts: { shrink: boolean }): Promise<void> {
  if (newSize % 512 !== 0)
    throw invalid(`${img.file}: qcow2 image size must be a multiple of 512 bytes (got ${newSize})`);
  img.checkWritable();
  await img.lock.run(async () => {
    const old = img.size;
    // Snapshots keep their own L1 table and size: growing leaves them intact.
    if (newSize < old && (await readSnapshots(img)).length > 0) {
      throw new PlatterError(
        'EUNSUPPORTED',
        `${img.file}: cannot shrink an image that has internal snapshots`,
      );
    }
    if (newSize < old) {
      if (!opts.shrink) {
        throw invalid(
          `${img.file}: shrinking from ${old} to ${newSize} bytes may lose data; use --shrink to allow it`,
        );
      }
      // Zero clusters may go (the tail reads zeros if it grows back); stored data may not.
      const busy = (await img.map(newSize, old - newSize)).find(
        (s) => s.kind === 'data' || s.kind === 'compressed',
      );
      if (busy) {
        throw new PlatterError(
          'EUNSUPPORTED',
          `${img.file}: cannot shrink: the range past the new size holds data (at offset ${busy.offset}); only an unallocated tail can be cut`,
        );
      }
    }
    await img.beginChange();
    const need = Math.ceil(newSize / img.cs / img.l2Entries);
    if (need * 8 > MAX_L1_BYTES)
      throw invalid(`${img.file}: size ${newSize} is too large for cluster size ${img.cs}`);
    if (need > img.h.l1Size) {
      const l1 = new Uint8Array(need * 8);
      l1.set(img.l1);
      const n = Math.ceil(l1.length / img.cs);
      const off = await img.allocClusters(n);
      const buf = new Uint8Array(n * img.cs);
      buf.set(l1);
      await img.writeHost(buf, off);
      await img.storage.flush();
      const oldOffset = img.h.l1Offset;
      const oldBytes = img.h.l1Size * 8;
      img.h.l1Offset = off;
      img.h.l1Size = need;
      img.h.size = newSize;
      img.l1 = l1;
      await img.writeHeader();
      await img.storage.flush();
      if (oldBytes > 0) await img.refcounts.addBytes(oldOffset, oldBytes, -1);
    } else {
      img.h.size = newSize;
      await img.writeHeader();
    }
    await img.storage.flush();
  });
}
