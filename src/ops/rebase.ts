/**
 * rebaseDisk(top, oldBelow, newBelow, backing): points the overlay `top`
 * (opened alone, writable) at a new backing file.
 *
 * Safe mode: wherever `top` has nothing of its own (a hole) and the old and
 * new backing chains differ, the old content is first written into `top`,
 * whole granules at a time (top is opened without its chain, so it cannot fill
 * a partial cluster from below itself), so the virtual content is unchanged.
 * Unsafe mode (`unsafe`): only the recorded name changes.
 */
import { isAllZero } from '../core/bytes.js';
import type { Disk } from '../core/disk.js';
import { PlatterError, throwIfAborted } from '../core/errors.js';
import type { OpOptions } from './progress.js';

export interface RebaseOptions extends OpOptions {
  unsafe?: boolean;
}

const CHUNK = 1 << 20;

async function readChain(d: Disk, buf: Uint8Array, offset: number): Promise<void> {
  const avail = Math.max(0, Math.min(buf.length, d.size - offset));
  if (avail > 0) await d.read(buf.subarray(0, avail), offset);
  buf.fill(0, avail);
}

export async function rebaseDisk(
  top: Disk,
  oldBelow: Disk,
  newBelow: Disk,
  backing: { name: string; format?: string } | null,
  opts: RebaseOptions = {},
): Promise<{ bytesCopied: number }> {
  const setBacking = top.features.setBacking;
  if (!setBacking) {
    const { format } = await top.info();
    throw new PlatterError('EUNSUPPORTED', `${top.name}: ${format} images have no backing file to change`);
  }
  let copied = 0;
  if (!opts.unsafe) {
    const g = top.granularity;
    const chunk = Math.max(g, Math.floor(CHUNK / g) * g);
    const holes = (await top.extents(0, top.size)).filter((e) => e.status === 'hole');
    const total = holes.reduce((n, e) => n + e.length, 0);
    let done = 0;
    const a = new Uint8Array(chunk);
    const b = new Uint8Array(chunk);
    for (const h of holes) {
      for (let pos = h.offset; pos < h.offset + h.length; ) {
        throwIfAborted(opts.signal);
        const n = Math.min(chunk, h.offset + h.length - pos);
        const oa = a.subarray(0, n);
        const nb = b.subarray(0, n);
        await readChain(oldBelow, oa, pos);
        await readChain(newBelow, nb, pos);
        for (let gpos = 0; gpos < n; gpos += g) {
          const e = Math.min(n, gpos + g);
          const x = oa.subarray(gpos, e);
          if (Buffer.compare(x, nb.subarray(gpos, e)) === 0) continue;
          if (isAllZero(x)) await top.writeZeroes(pos + gpos, e - gpos);
          else await top.write(x, pos + gpos);
          copied += e - gpos;
        }
        pos += n;
        done += n;
        opts.onProgress?.({ phase: 'rebasing', done, total });
      }
    }
  }
  await top.flush();
  await setBacking(backing);
  await top.flush();
  return { bytesCopied: copied };
}
