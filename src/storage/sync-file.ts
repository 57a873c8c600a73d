/**
 * Synchronous I/O on a source file or device and a destination file, opened a
 * second time beside their Storages (which keep the locks and serve everything
 * else): read and written with readSync/writeSync, one system call each,
 * instead of one thread-pool hand-off per read and write. `platter rescue`
 * uses it (see ops/rescue/engine.ts, RescueSyncIo) to read like GNU ddrescue.
 *
 * The source is read with O_DIRECT exactly when its Storage reads with direct
 * I/O: page-aligned buffers at sector-aligned offsets go straight to the
 * caller's buffer, anything else through an aligned bounce buffer (as file.ts
 * does). Errors are the same PlatterErrors as the Storages'. The destination
 * is synced in the background as writes accumulate (BackgroundSync).
 */
import {
  closeSync,
  constants,
  fdatasync as fsFdatasync,
  fstatSync,
  openSync,
  readSync,
  writeSync,
} from 'node:fs';
import { getSystemErrorName } from 'node:util';
import { BackgroundSync } from '../core/background-sync.js';
import { PlatterError } from '../core/errors.js';
import type { SectorRun, SectorRunOptions } from '../core/storage.js';
import { hostError } from './errors.js';
import { alignedSpan } from './file.js';
import { native } from './native.js';

const PAGE = 4096;
/** The bounce buffer of unaligned direct reads (file.ts uses 1 MiB too). */
const BOUNCE = 1 << 20;

/** Synchronous reads of the source and writes of the destination. */
export interface SyncFileIo {
  /** Fills `buf` from source offset `pos`, or throws a PlatterError. */
  read(buf: Uint8Array, pos: number): void;
  /** Writes `buf` at destination offset `pos`. */
  write(buf: Uint8Array, pos: number): void;
  /** The source's size now (absent for a block device, whose size is fixed). */
  size?(): number;
  /** A buffer for reads of up to `size` bytes (page-aligned for direct I/O). */
  buffer(size: number): Uint8Array;
  /** Makes everything written durable. */
  flush(): Promise<void>;
  /** See RescueSyncIo.readSectors (absent without the native addon). */
  readSectors?(from: number, to: number, sectorSize: number, opts: SectorRunOptions): SectorRun | undefined;
  /** Closes the second descriptors (after a sync in flight, for the destination). */
  close(): void;
}

export interface FileIoOptions {
  /** Read the source with O_DIRECT. */
  direct: boolean;
  /** The source's logical sector size (the O_DIRECT unit). */
  sectorSize: number;
  /** A block device's size is fixed (size() is then not offered). */
  isBlockDevice: boolean;
  /** Bytes written after which a background fdatasync starts (default WRITEBACK_BYTES). */
  writebackBytes?: number;
  /** fdatasync (tests pass a failing or counting one). */
  fdatasync?: typeof fsFdatasync;
}

/**
 * Written bytes after which the destination is synced in the background (one
 * sync at a time): the disk writes while the rescue reads, so the flush before
 * a save of the map (and the last one) waits only for what was written since.
 */
const WRITEBACK_BYTES = 32 << 20;

export function syncFileIo(source: string, dest: string, o: FileIoOptions): SyncFileIo {
  const direct = o.direct && constants.O_DIRECT !== undefined;
  let srcFd: number;
  let dstFd: number;
  try {
    srcFd = openSync(source, constants.O_RDONLY | (direct ? constants.O_DIRECT : 0));
  } catch (e) {
    throw hostError(e, source);
  }
  try {
    dstFd = openSync(dest, constants.O_WRONLY);
  } catch (e) {
    closeSync(srcFd);
    throw hostError(e, dest);
  }
  const a = Math.max(o.sectorSize, 512);
  /** Buffers known to start on a page (alignedBuffer), so O_DIRECT can read into them. */
  const aligned = new WeakSet<ArrayBufferLike>();
  const alloc = (size: number): Uint8Array => {
    const b = native.alignedBuffer(size, Math.max(PAGE, a));
    if (native.alignedMemory) aligned.add(b.buffer);
    return b;
  };
  let bounce: Uint8Array | undefined;
  const eof = (len: number, pos: number): PlatterError =>
    new PlatterError('EIO', `${source}: unexpected end of file reading ${len} bytes at offset ${pos}`);
  /** errno of the last failed read: a plain EIO is a bad sector, which says nothing about the size. */
  let lastErrno: string | undefined;
  // A failed read is a bad sector, not a bug: thousands of them must not each
  // capture a stack trace (Node's errno error, then our PlatterError).
  const quietly = <T>(fn: () => T): T => {
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    try {
      return fn();
    } finally {
      Error.stackTraceLimit = limit;
    }
  };
  const readFailed = (e: unknown, pos: number): Error => {
    lastErrno = (e as NodeJS.ErrnoException).code;
    return quietly(() => hostError(e, source, `read at offset ${pos}`));
  };
  const preadInto = native.preadInto;
  const pread = (fd: number, b: Uint8Array, pos: number): number => {
    lastErrno = undefined;
    if (preadInto) {
      // -errno for a bad sector: no error object but the one the engine gets.
      const n = preadInto(fd, b, pos);
      if (n < 0) throw readFailed({ code: getSystemErrorName(n) }, pos);
      return n;
    }
    return quietly(() => {
      try {
        return readSync(fd, b, 0, b.length, pos);
      } catch (e) {
        throw readFailed(e, pos);
      }
    });
  };

  /** Direct reads: aligned pieces straight into `buf`, the rest through the bounce buffer. */
  const directRead = (buf: Uint8Array, offset: number): void => {
    let done = 0;
    if (offset % a === 0 && buf.length % a === 0 && buf.byteOffset % PAGE === 0 && aligned.has(buf.buffer)) {
      done = pread(srcFd, buf, offset);
      if (done === buf.length) return;
      if (done === 0) throw eof(buf.length, offset);
    }
    bounce ??= alloc(BOUNCE + a);
    while (done < buf.length) {
      const pos = offset + done;
      const want = Math.min(buf.length - done, BOUNCE);
      const { start, skip, len } = alignedSpan(pos, want, a);
      const n = pread(srcFd, bounce.subarray(0, len), start);
      const got = Math.min(n - skip, want);
      if (got <= 0) throw eof(buf.length, offset);
      buf.set(bounce.subarray(skip, skip + got), done);
      done += got;
    }
  };

  const bufferedRead = (buf: Uint8Array, offset: number): void => {
    let done = 0;
    while (done < buf.length) {
      const n = pread(srcFd, buf.subarray(done), offset + done);
      if (n === 0) throw eof(buf.length, offset);
      done += n;
    }
  };

  const fstatSize = (): number => {
    try {
      return fstatSync(srcFd).size;
    } catch (e) {
      throw hostError(e, source, 'stat');
    }
  };
  let knownSize = o.isBlockDevice ? 0 : fstatSize();

  const fdatasync = o.fdatasync ?? fsFdatasync;
  const datasync = (): Promise<void> =>
    new Promise<void>((resolve, reject) =>
      fdatasync(dstFd, (e) => (e ? reject(hostError(e, dest, 'fsync')) : resolve())),
    );
  const writeback = new BackgroundSync(datasync, o.writebackBytes ?? WRITEBACK_BYTES);

  let sectorBuf: Uint8Array | undefined;
  const sectors = native.readSectors;
  const readSectors = (
    from: number,
    to: number,
    sectorSize: number,
    opts: SectorRunOptions,
  ): SectorRun | undefined => {
    if (!sectors) return undefined;
    // O_DIRECT reads whole units of the source's own sector size.
    if (direct && sectorSize % a !== 0) return undefined;
    writeback.throwFailure();
    if (!sectorBuf || sectorBuf.length < sectorSize) sectorBuf = alloc(sectorSize);
    const flags = (opts.forward ? 1 : 0) | (opts.stopOnError ? 2 : 0) | (opts.sparse ? 4 : 0);
    const params = new Float64Array([from, to, sectorSize, opts.dstDelta, flags, opts.maxMs * 1e6]);
    const r = sectors(srcFd, dstFd, sectorBuf, params);
    const [, good, readErrno, writeErrno] = r;
    let reached = r[0];
    const bad = r.slice(4);
    writeback.wrote(good);
    // A source that went away (ENOTCONN from a FUSE file, ENODEV...) failed its last
    // sector without a bad sector there: it counts as not tried.
    const gone =
      readErrno > 0 && bad.length > 0
        ? hostError({ code: getSystemErrorName(-readErrno) }, source, `read at offset ${bad[bad.length - 1]}`)
        : undefined;
    const readError = gone instanceof PlatterError && gone.code === 'EGONE' ? gone : undefined;
    if (readError) {
      bad.pop();
      reached += opts.forward ? -sectorSize : sectorSize;
    }
    // What size() needs to know of the last failure (see there): EIO, another errno, or the end of the file.
    if (bad.length > 0)
      lastErrno = readErrno === -1 ? undefined : readErrno > 0 ? getSystemErrorName(-readErrno) : 'EIO';
    return {
      reached,
      good,
      bad,
      ...(readError ? { readError } : {}),
      writeError:
        writeErrno > 0
          ? hostError(
              { code: getSystemErrorName(-writeErrno) },
              dest,
              `write ${opts.forward ? 'from' : 'up to'} offset ${reached + opts.dstDelta}`,
            )
          : undefined,
    };
  };

  let closed = false;
  return {
    read: direct ? directRead : bufferedRead,
    readSectors: sectors ? readSectors : undefined,
    write(buf, offset) {
      // A failed background sync is thrown by the next write (or flush).
      writeback.throwFailure();
      let done = 0;
      while (done < buf.length) {
        try {
          done += writeSync(dstFd, buf, done, buf.length - done, offset + done);
        } catch (e) {
          throw hostError(e, dest, `write at offset ${offset + done}`);
        }
      }
      writeback.wrote(buf.length);
    },
    // The engine asks after every failed read whether the source shrank or
    // vanished. After a media error (EIO) the answer is the last size seen: a
    // file that shrank reads short (end of file) and one that vanished fails
    // with another errno (ENOTCONN, ENODEV, ENXIO, ESTALE…), and those ask
    // fstat. A round trip to a FUSE server per bad sector is saved.
    size: o.isBlockDevice
      ? undefined
      : () => {
          const errno = lastErrno;
          lastErrno = undefined;
          if (errno !== 'EIO') knownSize = fstatSize();
          return knownSize;
        },
    buffer: alloc,
    async flush() {
      await writeback.idle();
      writeback.throwFailure();
      writeback.reset();
      await datasync();
    },
    close() {
      if (closed) return;
      closed = true;
      closeSync(srcFd);
      // Never close under a sync in flight (the descriptor could be reused meanwhile).
      if (writeback.busy) {
        void writeback.idle().then(() => {
          try {
            closeSync(dstFd);
          } catch {
            // nothing was pending on it: the sync has settled
          }
        });
      } else closeSync(dstFd);
    },
  };
}
