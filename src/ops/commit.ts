/**
 * commitDisk(top, base): writes what the overlay `top` holds itself (its
 * depth-0 data and zero extents; holes are skipped) into `base`, its backing
 * image opened writable, then empties the overlay (DiskFeatures.makeEmpty),
 * so the chain reads as before while the data now lives one layer down.
 *
 * `top` is the overlay opened alone (without its backing chain), so that the
 * backing file can be opened for writing by the same process.
 */
import type { Disk } from '../core/disk.js';
import { PlatterError, throwIfAborted } from '../core/errors.js';
import { copyDisk } from './copy.js';
import type { OpOptions } from './progress.js';

export interface CommitResult {
  /** Bytes of data written into the backing image. */
  bytesCommitted: number;
  /** Bytes made zero in the backing image. */
  bytesZeroed: number;
}

export async function commitDisk(top: Disk, base: Disk, opts: OpOptions = {}): Promise<CommitResult> {
  const makeEmpty = top.features.makeEmpty;
  if (!makeEmpty) {
    const { format } = await top.info();
    throw new PlatterError(
      'EUNSUPPORTED',
      `${top.name}: platter cannot empty ${format} images after a commit`,
    );
  }
  const exts = (await top.extents(0, top.size)).filter((e) => e.depth === 0 && e.status !== 'hole');
  const total = exts.reduce((n, e) => n + e.length, 0);
  const last = exts[exts.length - 1];
  if (last && last.offset + last.length > base.size) {
    throw new PlatterError(
      'EINVAL',
      `${top.name}: holds data up to ${last.offset + last.length}, past the end of its backing ${base.name} (size ${base.size}); resize the backing first`,
    );
  }
  const result: CommitResult = { bytesCommitted: 0, bytesZeroed: 0 };
  let done = 0;
  for (const e of exts) {
    throwIfAborted(opts.signal);
    if (e.status === 'zero') {
      await base.writeZeroes(e.offset, e.length);
      result.bytesZeroed += e.length;
    } else {
      const r = await copyDisk(top, base, {
        offset: e.offset,
        length: e.length,
        signal: opts.signal,
        flush: false,
        phase: 'committing',
        onProgress: (p) => opts.onProgress?.({ phase: 'committing', done: done + p.done, total }),
      });
      result.bytesCommitted += r.bytesWritten + r.bytesZeroed;
    }
    done += e.length;
    opts.onProgress?.({ phase: 'committing', done, total });
  }
  await base.flush();
  await makeEmpty();
  await top.flush();
  return result;
}
