/**
 * verify: hash an image's content and compare it with the hashes it stores
 * (EWF hash/digest) or that its acquisition log records (raw, split). Reading
 * checks every chunk checksum of an EWF image on the way; a corrupt chunk is a
 * mismatch that names the chunk and its segment, not an error.
 */
import { createHash, type Hash } from 'node:crypto';
import type { Disk } from '../core/disk.js';
import { PlatterError, throwIfAborted } from '../core/errors.js';
import { ioBuffer } from './buffers.js';
import { createMultiHash, type Digests, type HashAlgorithm } from './hash.js';
import type { OpOptions } from './progress.js';

export interface VerifyResult {
  result: 'match' | 'mismatch';
  expected: Digests;
  computed: Digests;
  /** The first difference: a hash, a size, or a corrupt chunk. */
  detail?: string;
  /** The first piecewise window whose hash differs (when windows were given). */
  badWindow?: { offset: number; length: number };
  bytes: number;
}

/**
 * Hashes the first `size` bytes (default: the whole disk) with every
 * algorithm in `expected` and compares.
 */
export async function verifyDisk(
  disk: Disk,
  expected: Digests,
  opts: OpOptions & {
    size?: number;
    windows?: ReadonlyArray<{ offset: number; length: number; hashes: Digests }>;
  } = {},
): Promise<VerifyResult> {
  const algs = Object.keys(expected) as HashAlgorithm[];
  if (algs.length === 0) throw new PlatterError('EINVAL', `${disk.name}: no stored hashes to verify against`);
  const size = opts.size ?? disk.size;
  if (size > disk.size) {
    return {
      result: 'mismatch',
      expected,
      computed: {},
      bytes: 0,
      detail: `the image holds ${disk.size} bytes but ${size} were acquired`,
    };
  }
  const mh = createMultiHash(algs);
  const step = 4 << 20;
  const bufs = [ioBuffer(step), ioBuffer(step)];
  const readAt = async (off: number, b: Uint8Array): Promise<Uint8Array> => {
    const sub = b.subarray(0, Math.min(step, size - off));
    await disk.read(sub, off);
    return sub;
  };
  // Piecewise windows: one algorithm (the cheapest they have) on this thread.
  const wins = [...(opts.windows ?? [])].sort((a, b) => a.offset - b.offset);
  const wAlg = (['sha1', 'sha256', 'md5', 'sha512'] as const).find(
    (a) => wins.length > 0 && wins.every((w) => w.hashes[a]),
  );
  let wi = 0;
  let wh: Hash | undefined = wAlg ? createHash(wAlg) : undefined;
  let badWindow: { offset: number; length: number } | undefined;
  const windowUpdate = (b: Uint8Array, off: number): void => {
    if (!wAlg || badWindow) return;
    for (let i = 0; i < b.length && wi < wins.length; ) {
      const w = wins[wi];
      const a = Math.max(off + i, w.offset);
      const end = Math.min(off + b.length, w.offset + w.length);
      if (end <= a) {
        if (off + b.length <= w.offset) return;
        wi++;
        continue;
      }
      wh!.update(b.subarray(a - off, end - off));
      i = end - off;
      if (end === w.offset + w.length) {
        if (wh!.digest('hex') !== w.hashes[wAlg]) {
          badWindow = { offset: w.offset, length: w.length };
          return;
        }
        wh = createHash(wAlg);
        wi++;
      }
    }
  };
  try {
    let ahead = size > 0 ? readAt(0, bufs[0]) : undefined;
    ahead?.catch(() => undefined);
    for (let off = 0, k = 0; off < size; off += step, k++) {
      throwIfAborted(opts.signal);
      let b: Uint8Array;
      try {
        b = await ahead!;
      } catch (e) {
        if (
          e instanceof PlatterError &&
          (e.code === 'ECORRUPT' || e.code === 'EVERIFY' || e.code === 'EIO')
        ) {
          mh.abort();
          return { result: 'mismatch', expected, computed: {}, bytes: off, detail: e.message };
        }
        throw e;
      }
      ahead = off + step < size ? readAt(off + step, bufs[(k + 1) % 2]) : undefined;
      ahead?.catch(() => undefined);
      windowUpdate(b, off);
      await mh.update(b);
      opts.onProgress?.({ phase: 'verifying', done: off + b.length, total: size });
    }
    const computed = await mh.digest();
    const bad = algs.find((a) => computed[a] !== expected[a]?.toLowerCase());
    if (!bad) return { result: 'match', expected, computed, bytes: size };
    const where = badWindow
      ? `; first differing window: bytes ${badWindow.offset}-${badWindow.offset + badWindow.length - 1}`
      : '';
    return {
      result: 'mismatch',
      expected,
      computed,
      bytes: size,
      detail: `${bad} is ${computed[bad]}, stored ${expected[bad]}${where}`,
      ...(badWindow ? { badWindow } : {}),
    };
  } catch (e) {
    mh.abort();
    throw e;
  }
}
