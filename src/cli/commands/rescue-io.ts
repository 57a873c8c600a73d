/**
 * The synchronous I/O path of `platter rescue` (RescueSyncIo, see
 * ops/rescue/engine.ts): for a local file or block device rescued into a raw
 * file or device, the source and the destination are opened a second time and
 * read and written with fs.readSync/fs.writeSync, one system call per read like
 * GNU ddrescue, instead of one thread-pool hand-off per read and write.
 *
 * The second descriptors see the same files as the Storages (which keep the
 * locks and are used for everything else): the source with O_DIRECT exactly
 * when its Storage reads with direct I/O, reads into page-aligned buffers at
 * sector-aligned offsets going straight to the caller's buffer and anything
 * else through an aligned bounce buffer (as storage/file.ts does), and errors
 * mapped to the same PlatterErrors. PLATTER_RESCUE_ASYNC=1 turns the path off.
 */
import * as fs from 'node:fs';
import type { Disk } from '../../core/disk.js';
import { PlatterError } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import type { RescueSyncIo } from '../../ops/rescue/engine.js';
import { BackgroundSync } from '../../ops/writeback.js';
import { hostError } from '../../storage/errors.js';
import { alignedSpan, type FileStorage } from '../../storage/file.js';
import { native } from '../../storage/native.js';

const PAGE = 4096;
/** The bounce buffer of unaligned direct reads (storage/file.ts uses 1 MiB too). */
const BOUNCE = 1 << 20;

export interface RescueFileIo extends RescueSyncIo {
  close(): void;
}

/** A FileStorage over exactly one host file (not a split set, not NBD). */
function oneFile(s: Storage | undefined): (FileStorage & { files: [string] }) | undefined {
  const f = s as Partial<FileStorage> | undefined;
  return f && typeof f.direct === 'boolean' && typeof f.sectorSize === 'number' && f.files?.length === 1
    ? (s as FileStorage & { files: [string] })
    : undefined;
}

/**
 * The synchronous path for `src` → `dst`, or undefined when they are not one
 * local file each (an NBD source, a split set, a destination format other than
 * raw): the engine then uses the Storage and Disk.
 */
export async function openRescueIo(src: Storage, dst: Disk): Promise<RescueFileIo | undefined> {
  if (process.env.PLATTER_RESCUE_ASYNC === '1') return undefined;
  const s = oneFile(src);
  const d = oneFile(dst.storages.length === 1 ? dst.storages[0] : undefined);
  if (!s || !d || (await dst.info()).format !== 'raw') return undefined;
  return fileRescueIo(s.files[0], d.files[0], {
    direct: s.direct,
    sectorSize: s.sectorSize,
    isBlockDevice: s.isBlockDevice,
  });
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
  /** fs.fdatasync (tests pass a failing or counting one). */
  fdatasync?: typeof fs.fdatasync;
}

/**
 * Written bytes after which the destination is synced in the background (one
 * sync at a time): the disk writes while the rescue reads, so the flush before
 * a save of the map (and the last one) waits only for what was written since.
 */
const WRITEBACK_BYTES = 32 << 20;

export function fileRescueIo(source: string, dest: string, o: FileIoOptions): RescueFileIo {
  const direct = o.direct && fs.constants.O_DIRECT !== undefined;
  let srcFd: number;
  let dstFd: number;
  try {
    srcFd = fs.openSync(source, fs.constants.O_RDONLY | (direct ? fs.constants.O_DIRECT : 0));
  } catch (e) {
    throw hostError(e, source);
  }
  try {
    dstFd = fs.openSync(dest, fs.constants.O_WRONLY);
  } catch (e) {
    fs.closeSync(srcFd);
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
  const pread = (fd: number, b: Uint8Array, pos: number): number => {
    // A failed read is a bad sector, not a bug: thousands of them must not each
    // capture a stack trace (Node's errno error, then our PlatterError).
    const limit = Error.stackTraceLimit;
    Error.stackTraceLimit = 0;
    lastErrno = undefined;
    try {
      return fs.readSync(fd, b, 0, b.length, pos);
    } catch (e) {
      lastErrno = (e as NodeJS.ErrnoException).code;
      throw hostError(e, source, `read at offset ${pos}`);
    } finally {
      Error.stackTraceLimit = limit;
    }
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
      return fs.fstatSync(srcFd).size;
    } catch (e) {
      throw hostError(e, source, 'stat');
    }
  };
  let knownSize = o.isBlockDevice ? 0 : fstatSize();

  const fdatasync = o.fdatasync ?? fs.fdatasync;
  const datasync = (): Promise<void> =>
    new Promise<void>((resolve, reject) =>
      fdatasync(dstFd, (e) => (e ? reject(hostError(e, dest, 'fsync')) : resolve())),
    );
  const writeback = new BackgroundSync(datasync, o.writebackBytes ?? WRITEBACK_BYTES);

  let closed = false;
  return {
    read: direct ? directRead : bufferedRead,
    write(buf, offset) {
      // A failed background sync is thrown by the next write (or flush).
      writeback.throwFailure();
      let done = 0;
      while (done < buf.length) {
        try {
          done += fs.writeSync(dstFd, buf, done, buf.length - done, offset + done);
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
      fs.closeSync(srcFd);
      // Never close under a sync in flight (the descriptor could be reused meanwhile).
      if (writeback.busy) {
        void writeback.idle().then(() => {
          try {
            fs.closeSync(dstFd);
          } catch {
            // nothing was pending on it: the sync has settled
          }
        });
      } else fs.closeSync(dstFd);
    },
  };
}
