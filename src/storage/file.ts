/**
 * A Storage on a host file or block device.
 *
 * - Positional I/O with pread/pwrite (no seek, no stat per call); reads fill the
 *   buffer or throw.
 * - Regular files report holes through SEEK_DATA/SEEK_HOLE (`extents`), free
 *   ranges with FALLOC_FL_PUNCH_HOLE (`discard`), zero them in place with
 *   FALLOC_FL_ZERO_RANGE (`zeroRange`) and reserve space with fallocate
 *   (`allocate`). Without the native addon these capabilities are absent and
 *   callers take their own fallbacks.
 * - Block devices: size from ioctl BLKGETSIZE64 (stat says 0), fixed size
 *   (truncate can only keep it), never truncated when opened as a destination.
 * - `mode.direct`: reads go through a second descriptor opened O_DIRECT, via an
 *   aligned bounce buffer (callers pass ordinary buffers). When the file system
 *   refuses O_DIRECT (tmpfs), reads stay buffered.
 *
 * Image locking, compatible with QEMU (block/file-posix.c). QEMU takes shared
 * (F_RDLCK) OFD locks on single bytes:
 *
 *   byte      | meaning while locked
 *   ----------|---------------------------------------------------------
 *   100 + bit | this holder uses permission `bit`
 *   200 + bit | this holder does not let others use permission `bit`
 *
 *   bit 0 consistent read, bit 1 write, bit 2 write-unchanged, bit 3 resize
 *   (QEMU <= 6.1 also had bit 4, graph-mod).
 *
 * After locking its bytes a holder tests (F_OFD_GETLK with F_WRLCK) byte 200+bit
 * for every permission it uses and byte 100+bit for every one it does not share;
 * any lock there from another open file description is a conflict. QEMU itself
 * opens raw images for writing with bytes 100-101 and qemu-nbd adds 203.
 *
 * platter's choice (DESIGN.md "Pinned details"), the same bytes as qemu-nbd:
 *   writer: uses read, write, resize; shares only consistent read -> every other
 *           writer and every reader that does not share writing is refused:
 *           platter's readers, QEMU's qcow2/vmdk/... readers (qemu-img info).
 *           QEMU's -U readers still work, and so does a plain QEMU reader of a
 *           raw file, which QEMU itself lets share writing (as with qemu-nbd).
 *   reader: uses read; does not share write, resize -> other readers coexist,
 *           writers (QEMU's too) are refused while it reads.
 *   lock 'none' (-U): takes and tests nothing.
 * OFD locks belong to the open file description, so two opens inside one
 * process see each other like two processes do; closing the descriptor drops
 * them.
 */
import { constants, readSync } from 'node:fs';
import { PlatterError } from '../core/errors.js';
import { InFlight } from '../core/in-flight.js';
import {
  type CopySpan,
  type DataRun,
  type OpenMode,
  type SpanCopier,
  type Storage,
  type StorageExtent,
  type StoreRange,
  writeZerosTo,
} from '../core/storage.js';
import { hostError } from './errors.js';
import { fsClose, fsFdatasync, fsFstat, fsFtruncate, fsOpen, pread, pwrite } from './fs-calls.js';
import { native as defaultNative, type Native, READ_LOCK, UNLOCK, WRITE_LOCK } from './native.js';

/** What a file Storage adds to the Storage contract. */
export interface FileStorage extends Storage {
  readonly files: readonly string[];
  readonly isBlockDevice: boolean;
  /** Logical sector size: the O_DIRECT unit of a block device (512 for files). */
  readonly sectorSize: number;
  /** Whether reads really bypass the page cache (mode.direct and the host allowed it). */
  readonly direct: boolean;
  /** Make a range read as zeros and keep it allocated (fallocate ZERO_RANGE). */
  zeroRange?(offset: number, length: number): Promise<void>;
}

export interface OpenFileOptions {
  /** open(2) flags; default O_RDWR or O_RDONLY from mode.write. */
  flags?: number;
  /** After the lock is taken, empty a regular file (create --force: never truncate before locking). */
  truncate?: boolean;
  /** The native helpers (tests pass `fallback`). */
  native?: Native;
}

// QEMU permission bits (include/block/block-common.h) and lock byte bases.
const PERM_READ = 0;
const PERM_WRITE = 1;
const PERM_WRITE_UNCHANGED = 2;
const PERM_RESIZE = 3;
const PERM_NAMES = ['consistent read', 'write', 'write unchanged', 'resize'];
const LOCK_PERM_BASE = 100;
const LOCK_SHARED_BASE = 200;

const WRITER = {
  perm: [PERM_READ, PERM_WRITE, PERM_RESIZE],
  unshared: [PERM_WRITE, PERM_WRITE_UNCHANGED, PERM_RESIZE],
};
const READER = { perm: [PERM_READ], unshared: [PERM_WRITE, PERM_RESIZE] };

/** Largest single pread/pwrite (Linux caps one call at 2 GiB - 4 KiB anyway). */
const MAX_IO = 1 << 30;
/**
 * Writes of at least this many bytes go through the addon's writeSpans, which
 * reserves the blocks of a file on ext4 before it writes them (native/platter.c
 * RESERVE_MIN): ext4 then maps them instead of reserving a delayed allocation
 * per 4 KiB block under the inode's lock.
 */
const RESERVED_WRITE = 256 * 1024;
/** Bounce buffer for O_DIRECT reads. */
const DIRECT_CHUNK = 1 << 20;
const DIRECT_ALIGN = 4096;
const RANGES_PER_CALL = 4096;
/** How long a locked reader reuses its last extents answer (see storage.extents). */
const MEMO_MS = 1000;

/**
 * The `a`-aligned span an O_DIRECT read needs for `want` bytes at `pos`: read
 * `len` bytes at `start` (into a bounce buffer) and use them from `skip` on.
 */
export function alignedSpan(
  pos: number,
  want: number,
  a: number,
): { start: number; skip: number; len: number } {
  const start = pos - (pos % a);
  const skip = pos - start;
  return { start, skip, len: Math.ceil((skip + want) / a) * a };
}

const errCode = (e: unknown): string | undefined => (e as NodeJS.ErrnoException)?.code;
const unsupportedErr = (e: unknown): boolean =>
  ['EOPNOTSUPP', 'ENOTSUP', 'ENOSYS'].includes(errCode(e) ?? '');

/**
 * Takes QEMU-compatible locks on `fd` for a writer or a reader; throws ELOCKED
 * (after dropping what it took) when another open file description conflicts.
 */
export function lockImage(nat: Native, fd: number, path: string, write: boolean): void {
  const want = write ? WRITER : READER;
  let conflict: string | undefined;
  for (const bit of want.perm) {
    if (!nat.ofdLock(fd, READ_LOCK, LOCK_PERM_BASE + bit, 1)) conflict ??= `"${PERM_NAMES[bit]}" lock`;
  }
  for (const bit of want.unshared) {
    if (!nat.ofdLock(fd, READ_LOCK, LOCK_SHARED_BASE + bit, 1))
      conflict ??= `shared "${PERM_NAMES[bit]}" lock`;
  }
  if (!conflict) {
    for (const bit of want.perm) {
      if (nat.ofdTest(fd, WRITE_LOCK, LOCK_SHARED_BASE + bit, 1)) {
        conflict = `"${PERM_NAMES[bit]}" lock`;
        break;
      }
    }
  }
  if (!conflict) {
    for (const bit of want.unshared) {
      if (nat.ofdTest(fd, WRITE_LOCK, LOCK_PERM_BASE + bit, 1)) {
        conflict = `shared "${PERM_NAMES[bit]}" lock`;
        break;
      }
    }
  }
  if (conflict) {
    nat.ofdLock(fd, UNLOCK, LOCK_PERM_BASE, LOCK_SHARED_BASE - LOCK_PERM_BASE + 8);
    throw new PlatterError(
      'ELOCKED',
      `${path}: is in use by another process (locked: cannot get the ${conflict}); use -U to read it anyway`,
    );
  }
}

/** Opens a file or block device as a Storage (see the header for locks and capabilities). */
export async function openFile(
  path: string,
  mode: OpenMode,
  opts: OpenFileOptions = {},
): Promise<FileStorage> {
  const nat = opts.native ?? defaultNative;
  const { O_RDWR, O_RDONLY } = constants;
  let fd: number;
  try {
    fd = await fsOpen(path, opts.flags ?? (mode.write ? O_RDWR : O_RDONLY));
  } catch (e) {
    throw hostError(e, path);
  }
  let directFd = -1;
  try {
    const st = await fsFstat(fd);
    if (st.isDirectory()) throw new PlatterError('EINVAL', `${path}: is a directory, not an image`);
    const isBlockDevice = st.isBlockDevice();
    if (!isBlockDevice && !st.isFile()) {
      throw new PlatterError('EINVAL', `${path}: is not a regular file or a block device`);
    }
    if (mode.lock !== 'none') lockImage(nat, fd, path, mode.write);
    let size: number;
    let sectorSize = 512;
    if (isBlockDevice) {
      size = nat.blockDeviceSize(fd);
      sectorSize = nat.logicalSectorSize(fd);
    } else {
      if (opts.truncate && st.size > 0) await fsFtruncate(fd, 0);
      size = opts.truncate ? 0 : st.size;
    }
    if (mode.direct && nat.available && nat.alignedMemory) {
      try {
        directFd = await fsOpen(path, O_RDONLY | constants.O_DIRECT);
      } catch (e) {
        if (errCode(e) !== 'EINVAL') throw e; // EINVAL: this file system has no O_DIRECT
      }
    }
    return makeFileStorage(path, mode, nat, { fd, directFd, size, isBlockDevice, sectorSize });
  } catch (e) {
    if (directFd >= 0) await fsClose(directFd).catch(() => undefined);
    await fsClose(fd).catch(() => undefined);
    throw e instanceof PlatterError ? e : hostError(e, path);
  }
}

interface Opened {
  fd: number;
  directFd: number;
  size: number;
  isBlockDevice: boolean;
  sectorSize: number;
}

/** The parts of `extents` (in order, tiling a range around [from, to)) inside [from, to). */
function clipExtents(extents: readonly StorageExtent[], from: number, to: number): StorageExtent[] {
  // The first extent that ends after `from`, by bisection: a 1 GiB window of a
  // sparse file holds thousands, and every chunk read asks for one or two.
  let lo = 0;
  let hi = extents.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (extents[mid].offset + extents[mid].length <= from) lo = mid + 1;
    else hi = mid;
  }
  const out: StorageExtent[] = [];
  for (let i = lo; i < extents.length && extents[i].offset < to; i++) {
    const e = extents[i];
    const a = Math.max(from, e.offset);
    const b = Math.min(to, e.offset + e.length);
    if (a < b) out.push({ offset: a, length: b - a, kind: e.kind });
  }
  return out;
}

/** The descriptor behind each open file Storage, for copierFrom (a source reached only through its Storage). */
const hostFiles = new WeakMap<
  Storage,
  { fd: number; path: string; readable: () => boolean; inFlight: InFlight }
>();

/**
 * The descriptor behind a file Storage while it is open and reads through the
 * page cache (not O_DIRECT); undefined for any other Storage. For host I/O
 * inside storage/ (the socket sender) only.
 */
export function pageCacheFd(storage: Storage): number | undefined {
  const f = hostFiles.get(storage);
  return f?.readable() ? f.fd : undefined;
}

/** [from, to, length] triples for the native copier. */
function triplesOf(spans: readonly CopySpan[]): Float64Array {
  const t = new Float64Array(spans.length * 3);
  spans.forEach((sp, i) => {
    t.set([sp.from, sp.to, sp.length], i * 3);
  });
  return t;
}

/** Maps a copySpans failure to the file and offset it happened at. */
function copyError(e: unknown, src: string, dst: string): Error {
  const err = e as NodeJS.ErrnoException & { offset?: number; side?: string };
  const onSource = err.side === 'source';
  const path = onSource ? src : dst;
  const at = `${onSource ? 'read' : 'write'} at offset ${err.offset}`;
  if (err.code === 'EOF') return new PlatterError('EIO', `${path}: unexpected end of file (${at})`);
  return hostError(e, path, at);
}

function makeFileStorage(path: string, mode: OpenMode, nat: Native, o: Opened): FileStorage {
  const { fd, directFd, isBlockDevice, sectorSize } = o;
  // The size is tracked, not stat'ed per call, while nobody else may change the
  // file: a locked writer, or any block device. Otherwise size() asks fstat.
  const trackSize = isBlockDevice || (mode.write && mode.lock !== 'none');
  let knownSize = o.size;
  let closed = false;
  const inFlight = new InFlight();
  const bounce: Uint8Array[] = [];
  const { FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE } = nat.constants;

  const checkOpen = (): void => {
    if (closed) throw new PlatterError('ECLOSED', `${path}: storage is closed`);
  };
  const checkWritable = (): void => {
    checkOpen();
    if (!mode.write) throw new PlatterError('EREADONLY', `${path}: opened read-only`);
  };
  const grew = (end: number): void => {
    if (end > knownSize) knownSize = end;
  };
  const checkDeviceEnd = (offset: number, length: number): void => {
    if (isBlockDevice && offset + length > knownSize) {
      throw new PlatterError(
        'ENOSPC',
        `${path}: write of ${length} bytes at offset ${offset} is past the end of the device (size ${knownSize})`,
      );
    }
  };

  /** Where writes to `spans` (`to` in this file) end; past a device's end is ENOSPC. */
  const spansEnd = (spans: readonly CopySpan[]): number => {
    let end = 0;
    for (const sp of spans) {
      checkDeviceEnd(sp.to, sp.length);
      end = Math.max(end, sp.to + sp.length);
    }
    return end;
  };

  const eof = (buf: Uint8Array, offset: number): PlatterError =>
    new PlatterError(
      'EIO',
      `${path}: unexpected end of file reading ${buf.length} bytes at offset ${offset}`,
    );

  async function bufferedRead(buf: Uint8Array, offset: number): Promise<void> {
    let done = 0;
    while (done < buf.length) {
      const n = await pread(
        fd,
        buf.subarray(done, done + Math.min(buf.length - done, MAX_IO)),
        offset + done,
      ).catch((e) => Promise.reject(hostError(e, path, `read at offset ${offset + done}`)));
      if (n === 0) throw eof(buf, offset);
      done += n;
    }
  }

  async function directRead(buf: Uint8Array, offset: number): Promise<void> {
    const a = Math.max(sectorSize, 512);
    const b = bounce.pop() ?? nat.alignedBuffer(DIRECT_CHUNK + a, Math.max(DIRECT_ALIGN, a));
    try {
      let done = 0;
      while (done < buf.length) {
        const pos = offset + done;
        const want = Math.min(buf.length - done, DIRECT_CHUNK);
        const { start, skip, len } = alignedSpan(pos, want, a);
        const n = await pread(directFd, b.subarray(0, len), start).catch((e) =>
          Promise.reject(hostError(e, path, `read at offset ${pos}`)),
        );
        const got = Math.min(n - skip, want);
        if (got <= 0) throw eof(buf, offset);
        buf.set(b.subarray(skip, skip + got), done);
        done += got;
      }
    } finally {
      bounce.push(b);
    }
  }

  const storage: FileStorage = {
    name: path,
    readOnly: !mode.write,
    files: [path],
    isBlockDevice,
    sectorSize,
    direct: directFd >= 0,

    async size() {
      checkOpen();
      if (trackSize) return knownSize;
      return (await fsFstat(fd).catch((e) => Promise.reject(hostError(e, path, 'stat')))).size;
    },

    async read(buf, offset) {
      checkOpen();
      if (buf.length === 0) return;
      return directFd >= 0 ? directRead(buf, offset) : bufferedRead(buf, offset);
    },

    async write(buf, offset) {
      checkWritable();
      if (buf.length === 0) return;
      checkDeviceEnd(offset, buf.length);
      if (storage.writeSpans && !isBlockDevice && buf.length >= RESERVED_WRITE) {
        return storage.writeSpans(buf, [{ from: 0, to: offset, length: buf.length }]);
      }
      let done = 0;
      while (done < buf.length) {
        const part = buf.subarray(done, done + Math.min(buf.length - done, MAX_IO));
        done += await pwrite(fd, part, offset + done).catch((e) =>
          Promise.reject(hostError(e, path, `write at offset ${offset + done}`)),
        );
      }
      grew(offset + buf.length);
    },

    async truncate(size) {
      checkWritable();
      if (isBlockDevice) {
        if (size > knownSize) {
          throw new PlatterError(
            'ENOSPC',
            `${path}: the device holds ${knownSize} bytes, ${size} are needed`,
          );
        }
        return; // a device keeps its size; the image uses its first `size` bytes
      }
      await fsFtruncate(fd, size).catch((e) => Promise.reject(hostError(e, path, 'truncate')));
      knownSize = size;
    },

    async flush() {
      checkOpen();
      if (mode.write) await fsFdatasync(fd).catch((e) => Promise.reject(hostError(e, path, 'fsync')));
    },

    async allocatedSize() {
      checkOpen();
      if (isBlockDevice) return knownSize;
      return (await fsFstat(fd)).blocks * 512;
    },

    async close() {
      if (closed) return;
      closed = true;
      await inFlight.drained();
      if (directFd >= 0) await fsClose(directFd).catch(() => undefined);
      await fsClose(fd).catch((e) => Promise.reject(hostError(e, path, 'close')));
    },
  };

  // Buffered reads only: an O_DIRECT source keeps its own aligned path.
  hostFiles.set(storage, { fd, path, readable: () => !closed && directFd < 0, inFlight });

  if (directFd < 0) {
    storage.readSync = (buf, offset) => {
      checkOpen();
      for (let done = 0; done < buf.length; ) {
        let n: number;
        try {
          n = readSync(fd, buf, done, Math.min(buf.length - done, MAX_IO), offset + done);
        } catch (e) {
          throw hostError(e, path, `read at offset ${offset + done}`);
        }
        if (n === 0) throw eof(buf, offset);
        done += n;
      }
    };
  }

  if (nat.available && mode.write) {
    storage.copierFrom = (src: Storage): SpanCopier | undefined => {
      const from = hostFiles.get(src);
      if (!from?.readable()) return undefined;
      return async (spans: readonly CopySpan[], zeroBlock: number) => {
        checkWritable();
        if (!from.readable()) throw new PlatterError('ECLOSED', `${from.path}: storage is closed`);
        const end = spansEnd(spans);
        // Both descriptors stay open until the copy ends: each store's close waits for it.
        const flat = await inFlight.run(() =>
          from.inFlight.run(() =>
            nat
              .copySpans(from.fd, fd, triplesOf(spans), zeroBlock)
              .catch((e) => Promise.reject(copyError(e, from.path, path))),
          ),
        );
        grew(end);
        const zeroRuns: StoreRange[] = [];
        for (let i = 2; i < flat.length; i += 2) zeroRuns.push({ offset: flat[i], length: flat[i + 1] });
        return { written: flat[0], skipped: flat[1], zeroRuns };
      };
    };
    storage.writeSpans = async (buf, spans) => {
      checkWritable();
      const end = spansEnd(spans);
      await nat.writeSpans(fd, buf, triplesOf(spans)).catch((e) => Promise.reject(copyError(e, path, path)));
      grew(end);
    };
  }

  if (nat.available && directFd < 0) {
    storage.readSpans = async (buf, spans, zeroBlock) => {
      checkOpen();
      const flat = await nat
        .readSpans(fd, buf, triplesOf(spans), zeroBlock)
        .catch((e) => Promise.reject(copyError(e, path, path)));
      const runs: DataRun[] = [];
      for (let i = 1; i < flat.length; i += 3)
        runs.push({ to: flat[i], length: flat[i + 1], at: flat[i + 2] });
      return { runs, consumed: flat[0] };
    };
  }

  if (nat.available && !isBlockDevice) {
    // A locked reader's file does not change under it (writers that take locks are
    // refused), so for a moment the last answer stands for queries inside it: the
    // copy engine asks for a 1 GiB window, then the chain asks again for every
    // chunk it reads, and each answer costs two lseeks (~100 µs each here). The
    // moment (MEMO_MS) bounds what a writer that ignores locks (dd, ddrescue
    // still running) can leave unseen by a long-lived reader such as `serve -r`.
    const memo = !mode.write && mode.lock !== 'none';
    let last: { from: number; to: number; at: number; extents: StorageExtent[] } | undefined;
    storage.extents = async (offset, length) => {
      checkOpen();
      let end = offset + length;
      const want = end;
      if (last && offset >= last.from && end <= last.to) {
        if (Date.now() - last.at < MEMO_MS) return clipExtents(last.extents, offset, end);
        end = last.to; // stale: ask again for the rest of the range at once, not chunk by chunk
      }
      const out: StorageExtent[] = [];
      const push = (o: number, l: number, kind: StorageExtent['kind']): void => {
        if (l > 0) out.push({ offset: o, length: l, kind });
      };
      let pos = offset;
      while (pos < end) {
        let ranges: number[] | null;
        try {
          ranges = nat.dataRanges(fd, pos, end, RANGES_PER_CALL);
        } catch (e) {
          throw hostError(e, path, 'lseek');
        }
        if (ranges === null) {
          push(pos, end - pos, 'data'); // the file system cannot tell: all data
          break;
        }
        if (ranges.length === 0) {
          push(pos, end - pos, 'hole');
          break;
        }
        for (let i = 0; i < ranges.length; i += 2) {
          push(pos, ranges[i] - pos, 'hole');
          push(ranges[i], ranges[i + 1] - ranges[i], 'data');
          pos = ranges[i + 1];
        }
        if (ranges.length < RANGES_PER_CALL * 2) {
          push(pos, end - pos, 'hole');
          break;
        }
      }
      if (!memo) return out;
      last = { from: offset, to: end, at: Date.now(), extents: out };
      return clipExtents(out, offset, want); // a copy: callers never share the memo's objects
    };
  }

  if (nat.available && mode.write) {
    storage.discard = async (offset, length) => {
      checkWritable();
      if (length === 0) return;
      checkDeviceEnd(offset, length);
      try {
        await nat.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length);
      } catch (e) {
        // No hole punching here (or unaligned on a device): zeros keep the contract.
        if (!unsupportedErr(e) && errCode(e) !== 'EINVAL') throw hostError(e, path, 'discard');
        await writeZerosTo(storage, offset, Math.min(length, Math.max(0, knownSize - offset)));
      }
    };
    storage.zeroRange = async (offset, length) => {
      checkWritable();
      if (length === 0) return;
      checkDeviceEnd(offset, length);
      try {
        await nat.fallocate(fd, FALLOC_FL_ZERO_RANGE, offset, length);
        grew(offset + length);
      } catch (e) {
        if (!unsupportedErr(e) && errCode(e) !== 'EINVAL') throw hostError(e, path, 'zero range');
        await writeZerosTo(storage, offset, length);
      }
    };
    storage.allocate = async (offset, length) => {
      checkWritable();
      if (length === 0) return;
      checkDeviceEnd(offset, length);
      if (isBlockDevice) return; // a device's blocks are always there
      try {
        await nat.fallocate(fd, 0, offset, length);
      } catch (e) {
        if (unsupportedErr(e)) {
          throw new PlatterError('EUNSUPPORTED', `${path}: the file system cannot preallocate (fallocate)`);
        }
        throw hostError(e, path, 'allocate');
      }
      grew(offset + length);
    };
  }

  // Every call that reaches the descriptor counts as in flight until it ends (close waits).
  const ops = storage as unknown as Record<string, unknown>;
  for (const name of TRACKED) {
    const op = ops[name];
    if (typeof op === 'function') ops[name] = (...args: unknown[]) => inFlight.run(() => op(...args));
  }
  return storage;
}

/** The Storage calls that reach the descriptor asynchronously (copierFrom's copier counts itself). */
const TRACKED = [
  'size',
  'read',
  'write',
  'truncate',
  'flush',
  'allocatedSize',
  'extents',
  'discard',
  'zeroRange',
  'allocate',
  'readSpans',
  'writeSpans',
] as const satisfies ReadonlyArray<keyof FileStorage>;
