/**
 * acquire: a forensic image in one read pass. The source Storage (opened
 * read-only, O_DIRECT for block devices) is read front to back; every block is
 * hashed (all requested algorithms, spread over the cores, plus optional
 * piecewise hashes per window) and written to the destination Disk.
 *
 * Read errors: a failed read is bisected at sector boundaries down to single
 * sectors, so that only the sectors that really fail are recorded (a large
 * read fails as a whole). A failing sector is retried `retries` times, then
 * zero-filled and recorded as unreadable; the image goes on. The destination
 * gets the ranges (EWF error2) through `features.evidence`.
 *
 * Afterwards the destination is reopened and its first `size` bytes hashed
 * again; any difference is a verification mismatch (never an exception).
 */
import { createHash, type Hash } from 'node:crypto';
import { BackgroundSync } from '../core/background-sync.js';
import type { Disk } from '../core/disk.js';
import { PlatterError, throwIfAborted } from '../core/errors.js';
import type { Storage } from '../core/storage.js';
import { ioBuffer } from './buffers.js';
import { createMultiHash, type Digests, type HashAlgorithm } from './hash.js';
import type { OpOptions } from './progress.js';

export interface Range {
  offset: number;
  length: number;
}

export interface PiecewiseHash extends Range {
  hashes: Digests;
}

export interface AcquireOptions extends OpOptions {
  algorithms: readonly HashAlgorithm[];
  /** Piecewise hashes every this many bytes (dcfldd hashwindow); 0: none. */
  hashWindow?: number;
  /** Further attempts at a failing sector before it is zero-filled. */
  retries?: number;
  /** The unit of bad-sector records and of bisection (the device's logical sector). */
  sectorSize?: number;
  /** Bytes per read. Default 4 MiB. */
  blockSize?: number;
  /** Re-read and hash the destination afterwards. */
  verify?: boolean;
  /** Opens the finished destination read-only for verification. */
  reopen?: () => Promise<Disk>;
  /**
   * Opens the source again for exact reads (O_DIRECT), used from the first
   * read error on: buffered reads of a failing file or device fail whole
   * pages or read-ahead windows, which would over-report bad sectors.
   */
  reopenSourcePrecise?: () => Promise<Storage>;
  /**
   * Starts pushing the destination's data written so far to stable storage
   * and resolves when that is done (fdatasync of a raw file). It must be safe
   * while further writes are in flight: acquire calls it in the background
   * every `writebackEvery` bytes (one call at a time), so that the device
   * writes while the source is still being read and hashed, and the final
   * `dest.flush()` waits only for the tail instead of the whole image.
   */
  writeback?: () => Promise<void>;
  /** Bytes written between background `writeback` calls. Default 128 MiB. */
  writebackEvery?: number;
}

export interface Verification {
  result: 'match' | 'mismatch' | 'skipped';
  hashes?: Digests;
  /** What differed (first algorithm), or why verification could not finish. */
  detail?: string;
}

export interface AcquireResult {
  size: number;
  hashes: Digests;
  piecewise: PiecewiseHash[];
  unreadable: Range[];
  /** Read attempts that failed (including those that later succeeded). */
  failedReads: number;
  /** Whether the destination stored the hashes given by this pass (EWF). */
  hashesStored: boolean;
  verification: Verification;
}

const isReadError = (e: unknown): boolean => e instanceof PlatterError && e.code === 'EIO';

/** Merges touching or overlapping ranges (sorted by offset). */
export function mergeRanges(ranges: readonly Range[]): Range[] {
  const out: Range[] = [];
  for (const r of [...ranges].sort((a, b) => a.offset - b.offset)) {
    const last = out[out.length - 1];
    if (last && r.offset <= last.offset + last.length) {
      last.length = Math.max(last.length, r.offset + r.length - last.offset);
    } else out.push({ ...r });
  }
  return out;
}

/**
 * Reads [offset, offset + buf.length) of `src`, zero-filling and recording the
 * sectors that cannot be read after `retries` further attempts.
 */
export async function readSalvaging(
  src: Storage,
  buf: Uint8Array,
  offset: number,
  o: { sectorSize: number; retries: number; bad: Range[]; onFailedRead: () => void; signal?: AbortSignal },
): Promise<void> {
  try {
    await src.read(buf, offset);
    return;
  } catch (e) {
    if (!isReadError(e)) throw e;
    o.onFailedRead();
  }
  throwIfAborted(o.signal);
  // Split at a sector boundary; the first sector of the buffer may start unaligned.
  const firstEnd = Math.min(buf.length, o.sectorSize - (offset % o.sectorSize));
  if (buf.length <= firstEnd) {
    for (let i = 0; i < o.retries; i++) {
      try {
        await src.read(buf, offset);
        return;
      } catch (e) {
        if (!isReadError(e)) throw e;
        o.onFailedRead();
      }
    }
    buf.fill(0);
    o.bad.push({ offset, length: buf.length });
    return;
  }
  let cut = firstEnd + Math.floor((buf.length - firstEnd) / o.sectorSize / 2) * o.sectorSize;
  if (cut >= buf.length) cut = firstEnd;
  await readSalvaging(src, buf.subarray(0, cut), offset, o);
  await readSalvaging(src, buf.subarray(cut), offset + cut, o);
}

/** Hex digests of `algs` over a buffer, synchronously (piecewise windows). */
function windowHashes(algs: readonly HashAlgorithm[]): { update(b: Uint8Array): void; digest(): Digests } {
  const hs: Array<[HashAlgorithm, Hash]> = algs.map((a) => [a, createHash(a)]);
  return {
    update: (b) => {
      for (const [, h] of hs) h.update(b);
    },
    digest: () => Object.fromEntries(hs.map(([a, h]) => [a, h.digest('hex')])) as Digests,
  };
}

export async function acquire(src: Storage, dest: Disk, opts: AcquireOptions): Promise<AcquireResult> {
  const size = await src.size();
  const sectorSize = opts.sectorSize ?? 512;
  const blockSize = Math.max(sectorSize, Math.floor((opts.blockSize ?? 4 << 20) / sectorSize) * sectorSize);
  const retries = opts.retries ?? 2;
  const window = opts.hashWindow ?? 0;
  if (dest.size < size) {
    throw new PlatterError(
      'EINVAL',
      `${dest.name}: destination of ${dest.size} bytes is smaller than the source (${size})`,
    );
  }
  const mh = createMultiHash(opts.algorithms);
  let digests: Digests | undefined;
  const hashesStored =
    dest.features.evidence?.supplyHashes(() => {
      if (!digests?.md5) throw new Error('internal error: acquire has no MD5 for the image');
      return { md5: digests.md5, ...(digests.sha1 ? { sha1: digests.sha1 } : {}) };
    }) ?? false;
  const bad: Range[] = [];
  let failedReads = 0;
  const piecewise: PiecewiseHash[] = [];
  let win = window > 0 ? windowHashes(opts.algorithms) : undefined;
  let winStart = 0;
  const progress = (done: number): void => opts.onProgress?.({ phase: 'acquiring', done, total: size });

  let precise: Promise<Storage> | undefined;
  const salvageSource = (): Promise<Storage> => {
    precise ??= opts.reopenSourcePrecise ? opts.reopenSourcePrecise().catch(() => src) : Promise.resolve(src);
    return precise;
  };
  const readInto = async (buf: Uint8Array, off: number): Promise<void> => {
    try {
      await src.read(buf, off);
      return;
    } catch (e) {
      if (!isReadError(e)) throw e;
      failedReads++;
    }
    await readSalvaging(await salvageSource(), buf, off, {
      sectorSize,
      retries,
      bad,
      onFailedRead: () => failedReads++,
      signal: opts.signal,
    });
  };

  // Pipeline: up to READ_AHEAD reads in flight, hashing in order on this
  // thread (and the hash workers), up to WRITE_BEHIND writes in flight.
  const READ_AHEAD = 3;
  const WRITE_BEHIND = 3;
  const free: Uint8Array[] = Array.from({ length: READ_AHEAD + WRITE_BEHIND + 1 }, () => ioBuffer(blockSize));
  const blocks = Math.ceil(size / blockSize);
  const reads: Array<Promise<Uint8Array>> = [];
  const writes: Array<Promise<Uint8Array>> = [];
  let nextRead = 0;
  const startReads = (): void => {
    while (nextRead < blocks && reads.length < READ_AHEAD && free.length > 0) {
      const off = nextRead * blockSize;
      const buf = free.pop()!.subarray(0, Math.min(blockSize, size - off));
      const p = readInto(buf, off).then(() => buf);
      p.catch(() => undefined);
      reads.push(p);
      nextRead++;
    }
  };
  const recycle = (b: Uint8Array): void => {
    free.push(new Uint8Array(b.buffer, b.byteOffset, blockSize));
  };
  // Background writeback: one call in flight, started once enough has been written since the last.
  const writeback = opts.writeback
    ? new BackgroundSync(opts.writeback, Math.max(1, opts.writebackEvery ?? 128 << 20))
    : undefined;

  try {
    progress(0);
    startReads();
    for (let k = 0; k < blocks; k++) {
      throwIfAborted(opts.signal);
      const buf = await reads.shift()!;
      const off = k * blockSize;
      if (win) {
        for (let i = 0; i < buf.length; ) {
          const n = Math.min(buf.length - i, winStart + window - (off + i));
          win.update(buf.subarray(i, i + n));
          i += n;
          if (off + i === winStart + window || off + i === size) {
            piecewise.push({ offset: winStart, length: off + i - winStart, hashes: win.digest() });
            winStart = off + i;
            win = windowHashes(opts.algorithms);
          }
        }
      }
      const w = dest.write(buf, off).then(() => buf);
      w.catch(() => undefined);
      writes.push(w);
      await mh.update(buf);
      while (writes.length >= WRITE_BEHIND || (free.length === 0 && writes.length > 0)) {
        const done = await writes.shift()!;
        recycle(done);
        writeback?.wrote(done.length);
      }
      startReads();
      progress(off + buf.length);
    }
    for (const w of writes.splice(0)) recycle(await w);
    digests = await mh.digest();
    await writeback?.idle();
    writeback?.throwFailure();
  } catch (e) {
    mh.abort();
    await Promise.allSettled([...reads, ...writes]);
    // The destination is closed by the caller: no writeback may still use it.
    await writeback?.idle();
    throw e;
  } finally {
    if (precise) {
      const p = await precise;
      if (p !== src) await p.close().catch(() => undefined);
    }
  }
  const unreadable = mergeRanges(bad);
  dest.features.evidence?.recordUnreadable(unreadable);
  await dest.flush();
  await dest.close();

  let verification: Verification = { result: 'skipped' };
  if (opts.verify !== false && opts.reopen) verification = await verifyCopy(opts.reopen, size, digests, opts);
  return { size, hashes: digests, piecewise, unreadable, failedReads, hashesStored, verification };
}

/** Hashes the first `size` bytes of the reopened destination and compares. */
async function verifyCopy(
  reopen: () => Promise<Disk>,
  size: number,
  want: Digests,
  opts: AcquireOptions,
): Promise<Verification> {
  const algs = Object.keys(want) as HashAlgorithm[];
  let disk: Disk;
  try {
    disk = await reopen();
  } catch (e) {
    if (e instanceof PlatterError)
      return { result: 'mismatch', detail: `the destination cannot be opened: ${e.message}` };
    throw e;
  }
  const mh = createMultiHash(algs);
  try {
    if (disk.size < size) {
      return { result: 'mismatch', detail: `the destination holds ${disk.size} bytes, the source ${size}` };
    }
    const step = 4 << 20;
    const bufs = [ioBuffer(step), ioBuffer(step)];
    let ahead: Promise<Uint8Array> | undefined;
    const readAt = async (off: number, b: Uint8Array): Promise<Uint8Array> => {
      const sub = b.subarray(0, Math.min(step, size - off));
      await disk.read(sub, off);
      return sub;
    };
    if (size > 0) ahead = readAt(0, bufs[0]);
    ahead?.catch(() => undefined);
    for (let off = 0, k = 0; off < size; off += step, k++) {
      throwIfAborted(opts.signal);
      let b: Uint8Array;
      try {
        b = await ahead!;
      } catch (e) {
        if (e instanceof PlatterError && e.code !== 'ECANCELED') {
          return { result: 'mismatch', detail: `reading the destination failed: ${e.message}` };
        }
        throw e;
      }
      ahead = off + step < size ? readAt(off + step, bufs[(k + 1) % 2]) : undefined;
      ahead?.catch(() => undefined);
      await mh.update(b);
      opts.onProgress?.({ phase: 'verifying', done: off + b.length, total: size });
    }
    const got = await mh.digest();
    const bad = algs.find((a) => got[a] !== want[a]);
    return bad
      ? {
          result: 'mismatch',
          hashes: got,
          detail: `${bad} of the destination is ${got[bad]}, the source's ${want[bad]}`,
        }
      : { result: 'match', hashes: got };
  } catch (e) {
    mh.abort();
    throw e;
  } finally {
    await disk.close();
  }
}
