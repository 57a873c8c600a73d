/**
 * convertDisk(src, dst): copy the virtual content of `src` into a freshly
 * created (all-zero) `dst`, and with `verify` hash both sides: the source while
 * it is copied (copyDisk's onData, no second read pass), the destination read
 * back afterwards. A mismatch is an EVERIFY error.
 *
 * Creating and naming the destination (DST.partial, rename) is the caller's
 * business: operations never name a format or a file (principle 1).
 */
import type { Disk } from '../core/disk.js';
import { PlatterError } from '../core/errors.js';
import { type CopyOptions, type CopyResult, copyDisk } from './copy.js';
import { createMultiHash, type Digests, type HashAlgorithm, hashDisk } from './hash.js';

export interface ConvertOptions extends CopyOptions {
  /** Hash source and result and compare. */
  verify?: boolean;
  /** Algorithm for verify. Default sha256. */
  verifyAlgorithm?: HashAlgorithm;
}

export interface ConvertResult extends CopyResult {
  verified?: { algorithm: HashAlgorithm; source: string; destination: string };
}

export async function convertDisk(src: Disk, dst: Disk, opts: ConvertOptions = {}): Promise<ConvertResult> {
  const alg = opts.verifyAlgorithm ?? 'sha256';
  const mh = opts.verify ? createMultiHash([alg]) : undefined;
  let result: ConvertResult;
  try {
    result = await copyDisk(src, dst, {
      dstZeroed: true,
      ...opts,
      onData: mh
        ? async (r) => {
            await opts.onData?.(r);
            await (r.data ? mh.update(r.data) : mh.updateZeros(r.length));
          }
        : opts.onData,
    });
  } catch (e) {
    mh?.abort();
    throw e;
  }
  if (mh) {
    const srcHash: Digests = await mh.digest();
    // A destination rounded up (to a sector, a cluster) is compared over the source's size.
    const dstHash = await hashDisk(dst, [alg], {
      signal: opts.signal,
      onProgress: opts.onProgress,
      phase: 'verifying',
      length: src.size,
    });
    const source = srcHash[alg]!;
    const destination = dstHash[alg]!;
    if (source !== destination) {
      throw new PlatterError(
        'EVERIFY',
        `${dst.name}: verification failed: ${alg} of the source ${source} != destination ${destination}`,
      );
    }
    result.verified = { algorithm: alg, source, destination };
  }
  return result;
}
