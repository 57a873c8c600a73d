/**
 * The native helpers (native/platter.c, built by node-gyp at `npm ci` time) and
 * their pure-JavaScript fallbacks. The fallback is chosen when the addon was not
 * built, fails to load, or PLATTER_NO_NATIVE=1 is set; it is correct but weaker:
 *
 *   helper            | native                          | fallback
 *   ------------------|---------------------------------|------------------------------
 *   dataRanges        | lseek SEEK_DATA/SEEK_HOLE       | null: "cannot tell", all data
 *   preadInto         | pread(2), -errno on failure     | null (callers use fs.readSync)
 *   readSectors       | rescue's sector reads and writes| null (the engine reads one by one)
 *                     | in one call (native/sectors.c)  |
 *   fallocate         | fallocate(2), off the main loop | rejects EOPNOTSUPP
 *   ofdLock / ofdTest | fcntl F_OFD_SETLK / F_OFD_GETLK | no locks: always granted
 *   blockDeviceSize   | ioctl BLKGETSIZE64              | /sys/dev/block/M:m/size, else stat
 *   logicalSectorSize | ioctl BLKSSZGET                 | sysfs logical_block_size, else 512
 *   alignedBuffer     | posix_memalign                  | ordinary memory (no O_DIRECT)
 *   copySpans         | pread/scan/pwrite on a pool     | rejects EOPNOTSUPP (file.ts offers
 *   readSpans,        | thread (native/copy.c)          | none without the addon)
 *   writeSpans        |                                 |
 *   socket            | sendfile/send on a pool thread  | null (the NBD server writes
 *                     | (native/send.c)                 | through Node's socket)
 *
 * storage/file.ts asks `native.available` before offering discard/allocate,
 * locks and O_DIRECT, so the fallback never pretends to do what it cannot.
 */
import { fstatSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';

/** Lock types for ofdLock/ofdTest (struct flock l_type). */
export const UNLOCK = 0;
export const READ_LOCK = 1;
export const WRITE_LOCK = 2;

export interface LockHolder {
  type: typeof READ_LOCK | typeof WRITE_LOCK;
  start: number;
  length: number;
  /** -1 for OFD locks (they belong to an open file description, not a process). */
  pid: number;
}

export interface Native {
  /** true when the addon is loaded; false for the fallback. */
  readonly available: boolean;
  /** alignedBuffer really aligns (false in the fallback, or where external memory is refused). */
  readonly alignedMemory: boolean;
  /** Next offset >= `offset` holding data; -1 when only a hole (or EOF) follows. */
  seekData(fd: number, offset: number): number;
  /** Next hole at or after `offset` (EOF counts as a hole); -1 when `offset` is past EOF. */
  seekHole(fd: number, offset: number): number;
  /**
   * Data ranges in [offset, end) as a flat list [start0, end0, start1, end1, …]
   * (at most `max` pairs; call again from the last end for more), or null when
   * the file system cannot tell (treat everything as data).
   */
  dataRanges(fd: number, offset: number, end: number, max: number): number[] | null;
  /**
   * pread(2) on the calling thread: bytes read, or -errno (a failed read is an
   * answer here, not an exception); null in the fallback, which has none.
   */
  preadInto: ((fd: number, buf: Uint8Array, offset: number) => number) | null;
  /**
   * Sectors of [from, to) read one pread each, in order, the good ones written
   * to dstFd at once (native/sectors.c has the contract); params are [from, to,
   * sectorSize, dstDelta, flags, maxNs]. Resolves [reached, goodBytes,
   * readErrno, writeErrno, ...bad positions]; null in the fallback.
   */
  readSectors: ((srcFd: number, dstFd: number, buf: Uint8Array, params: Float64Array) => number[]) | null;
  /** fallocate(2) with FALLOC_FL_* `mode`; errors carry `code` like Node's fs errors. */
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<void>;
  /** Take (READ_LOCK/WRITE_LOCK) or drop (UNLOCK) an OFD lock; false when another holder conflicts. */
  ofdLock(fd: number, type: number, start: number, length: number): boolean;
  /** Who would conflict with taking `type` on the range (another open file description), or null. */
  ofdTest(fd: number, type: number, start: number, length: number): LockHolder | null;
  blockDeviceSize(fd: number): number;
  logicalSectorSize(fd: number): number;
  /** `size` bytes whose address is a multiple of `alignment` (for O_DIRECT). */
  alignedBuffer(size: number, alignment: number): Uint8Array;
  /**
   * Copies [srcOffset, dstOffset, length] triples from one descriptor to another
   * off the main thread, leaving blocks of `zeroBlock` bytes that are all zero
   * unwritten; resolves [written, skipped, then the unwritten destination
   * ranges as pairs dstOffset, length]. Errors carry `offset` and `side`
   * ('source' | 'destination'); a short source has code 'EOF'.
   */
  copySpans(srcFd: number, dstFd: number, spans: Float64Array, zeroBlock: number): Promise<number[]>;
  /**
   * The same reads and zero scan into `buf` (the spans packed in order, all
   * zero SCAN_PIECE pieces taking no room), up to where `buf` is full; resolves
   * [consumed, then the non-zero runs as triples dstOffset, length, bufOffset].
   */
  readSpans(srcFd: number, buf: Uint8Array, spans: Float64Array, zeroBlock: number): Promise<number[]>;
  /** Writes [bufOffset, dstOffset, length] triples of `buf`; resolves the bytes written. */
  writeSpans(dstFd: number, buf: Uint8Array, spans: Float64Array): Promise<number>;
  /** Socket sends off the main thread (native/send.c); null in the fallback. */
  readonly socket: SocketCalls | null;
  readonly constants: {
    readonly FALLOC_FL_KEEP_SIZE: number;
    readonly FALLOC_FL_PUNCH_HOLE: number;
    readonly FALLOC_FL_ZERO_RANGE: number;
  };
}

export interface SocketCalls {
  /**
   * Sends [fd, offset, length] triples to a non-blocking stream socket, in
   * order, as one pool work item: a negative fd -(i + 1) names bytes of
   * buffers[i], any other a range of that file (sendfile(2)). Waits for room
   * in the socket `waitMs` at most in all, then resolves the bytes sent so far;
   * rejects with an errno error when a send fails (the peer left).
   */
  sendSpans(sock: number, buffers: Uint8Array[], segments: Float64Array, waitMs: number): Promise<number>;
  /** A duplicate of the descriptor (close-on-exec), for a sender of its own. */
  dupFd(fd: number): number;
  closeFd(fd: number): void;
  /** shutdown(SHUT_RDWR): ends the connection for every descriptor of it. */
  shutdownFd(fd: number): void;
  /**
   * A unix stream socket's send buffer set to `bytes` (capped by the kernel at
   * net.core.wmem_max); returns the size it got, 0 for other sockets.
   */
  widenSendBuffer(fd: number, bytes: number): number;
}

/** What the addon exports: Native's calls, the socket calls beside them, alignedBuffer as an ArrayBuffer. */
interface Addon
  extends Omit<Native, 'available' | 'alignedMemory' | 'alignedBuffer' | 'socket'>,
    SocketCalls {
  alignedBuffer(size: number, alignment: number): ArrayBuffer;
}

function sysfsBlock(fd: number, file: string): number | undefined {
  try {
    const rdev = fstatSync(fd).rdev;
    // Linux dev_t: major in bits 8..19 (and 32..43), minor in bits 0..7 and 20..31.
    const major = ((rdev >> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
    const minor = (rdev & 0xff) | ((rdev >> 12) & ~0xff);
    const text = readFileSync(`/sys/dev/block/${major}:${minor}/${file}`, 'utf8').trim();
    const n = Number(text);
    return Number.isSafeInteger(n) ? n : undefined;
  } catch {
    return undefined;
  }
}

function notSupported(syscall: string): NodeJS.ErrnoException {
  const e: NodeJS.ErrnoException = new Error(`${syscall}: operation not supported (no native addon)`);
  e.code = 'EOPNOTSUPP';
  e.syscall = syscall;
  return e;
}

/** The pure-JavaScript stand-in (also used by tests to prove the fallback path). */
export const fallback: Native = {
  available: false,
  alignedMemory: false,
  seekData: (_fd, offset) => offset,
  seekHole: (fd, offset) => {
    const size = fstatSync(fd).size;
    return offset > size ? -1 : size;
  },
  dataRanges: () => null,
  preadInto: null,
  readSectors: null,
  fallocate: async () => Promise.reject(notSupported('fallocate')),
  ofdLock: () => true,
  ofdTest: () => null,
  blockDeviceSize: (fd) => {
    const sectors = sysfsBlock(fd, 'size'); // always in 512-byte units
    return sectors !== undefined ? sectors * 512 : fstatSync(fd).size;
  },
  logicalSectorSize: (fd) => sysfsBlock(fd, 'queue/logical_block_size') ?? 512,
  alignedBuffer: (size) => new Uint8Array(size),
  copySpans: async () => Promise.reject(notSupported('copySpans')),
  readSpans: async () => Promise.reject(notSupported('readSpans')),
  writeSpans: async () => Promise.reject(notSupported('writeSpans')),
  socket: null,
  constants: { FALLOC_FL_KEEP_SIZE: 1, FALLOC_FL_PUNCH_HOLE: 2, FALLOC_FL_ZERO_RANGE: 16 },
};

/** Why the addon is not in use (undefined when it is). */
export let nativeUnavailableReason: string | undefined;

function load(): Native {
  if (process.env.PLATTER_NO_NATIVE === '1') {
    nativeUnavailableReason = 'disabled by PLATTER_NO_NATIVE=1';
    return fallback;
  }
  if (process.platform !== 'linux') {
    nativeUnavailableReason = `not built for ${process.platform}`;
    return fallback;
  }
  try {
    // Same relative path from src/storage (tsx) and dist/storage (built).
    const path = new URL('../../native/build/Release/platter.node', import.meta.url).pathname;
    const addon = createRequire(import.meta.url)(path) as Addon;
    let alignedMemory = true;
    try {
      addon.alignedBuffer(4096, 4096); // some embedders (V8 sandbox) refuse external memory
    } catch {
      alignedMemory = false;
    }
    const { sendSpans, dupFd, closeFd, shutdownFd, widenSendBuffer } = addon;
    return {
      ...addon,
      available: true,
      alignedMemory,
      socket: { sendSpans, dupFd, closeFd, shutdownFd, widenSendBuffer },
      alignedBuffer: (size, alignment) => new Uint8Array(addon.alignedBuffer(size, alignment)),
    };
  } catch (e) {
    nativeUnavailableReason = `addon not loaded: ${(e as Error).message.split('\n')[0]}`;
    return fallback;
  }
}

/** The helpers in use for this process. */
export const native: Native = load();
