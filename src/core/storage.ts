/**
 * Storage: a byte store on the host (file, block device, split set, NBD export,
 * memory). Format drivers read and write their images only through Storage.
 *
 * Contract (principle 6): `read` fills the whole buffer or throws; reading past
 * the end throws a PlatterError (EIO) naming the storage. Writing past the end
 * extends the store (where it can grow).
 */
export interface Storage {
  /** A path or URI, for messages. */
  readonly name: string;
  readonly readOnly: boolean;
  size(): Promise<number>;
  read(buf: Uint8Array, offset: number): Promise<void>;
  write(buf: Uint8Array, offset: number): Promise<void>;
  truncate(size: number): Promise<void>;
  flush(): Promise<void>;
  close(): Promise<void>;

  // Optional capabilities; callers check for presence, never catch "not capable".
  /** Which ranges hold data and which are holes (SEEK_DATA/SEEK_HOLE); tiles [offset, offset+length). */
  extents?(offset: number, length: number): Promise<StorageExtent[]>;
  /** Deallocate a range so it reads as zeros (punch a hole). */
  discard?(offset: number, length: number): Promise<void>;
  /** Reserve space for a range without writing it (fallocate). */
  allocate?(offset: number, length: number): Promise<void>;
  /** Bytes actually allocated on the host (st_blocks * 512). */
  allocatedSize?(): Promise<number>;
  /** Files on the host that make up this store (a split set has several). */
  readonly files?: readonly string[];
  /**
   * A bulk copier from `src` into this store (host files: off the main thread,
   * no round trip through JavaScript memory), or undefined when this store
   * cannot copy from that one directly. It leaves all-zero blocks unwritten, so
   * it suits only ranges of this store that already read zeros.
   */
  copierFrom?(src: Storage): SpanCopier | undefined;
  /**
   * Reads spans of this store (`from`) packed into a buffer, scanning them for
   * zeros on the way (host files: one call off the main thread).
   */
  readSpans?: SpanReader;
  /**
   * Reads on the calling thread, the same bytes and errors as read() (host
   * files through the page cache). For a consumer that keeps this thread busy
   * between reads anyway (hashing): a trip through the thread pool per read
   * only adds work, and on a machine whose cores share their execution units
   * a read running beside the hashing slows it down more than it saves.
   */
  readSync?(buf: Uint8Array, offset: number): void;
  /**
   * Writes pieces of `buf` (`from` in the buffer, `to` in this store) in one
   * call (host files: off the main thread).
   */
  writeSpans?(buf: Uint8Array, spans: readonly CopySpan[]): Promise<void>;
}

/** `length` bytes at `from` in the source store go to `to` in this one. */
export interface CopySpan {
  from: number;
  to: number;
  length: number;
}

/** `length` bytes that are not all zero, for `to`, at `at` in the buffer. */
export interface DataRun {
  to: number;
  length: number;
  at: number;
}

/**
 * Reads the spans' bytes (`from` in this store) into `buf` and scans them in
 * blocks of `zeroBlock` bytes on absolute multiples of `to`: resolves the runs
 * that are not all zero, and how many bytes of the spans (in order) it got
 * through before `buf` was full (all zero blocks take no room in `buf`; `buf`
 * must hold at least SCAN_PIECE bytes).
 */
export type SpanReader = (
  buf: Uint8Array,
  spans: readonly CopySpan[],
  zeroBlock: number,
) => Promise<{ runs: DataRun[]; consumed: number }>;

/** The unit in which a SpanReader fills its buffer (native/copy.c's SCAN_PIECE). */
export const SCAN_PIECE = 512 * 1024;

/**
 * Zeros for a range of `length` bytes, handed out in pieces of one buffer:
 * `write(zeros, rel)` gets each piece and where it starts in the range. The
 * one "write zeros here" loop (stores without a zeroing call, formats without
 * a zero flag).
 */
export async function eachZeroPiece(
  length: number,
  write: (zeros: Uint8Array, rel: number) => Promise<unknown>,
  piece = 1 << 20,
): Promise<void> {
  const zeros = new Uint8Array(Math.min(length, piece));
  for (let rel = 0; rel < length; rel += zeros.length)
    await write(zeros.subarray(0, Math.min(zeros.length, length - rel)), rel);
}

/** Writes `length` zero bytes to `storage` at `offset` (eachZeroPiece). */
export function writeZerosTo(
  storage: Storage,
  offset: number,
  length: number,
  piece?: number,
): Promise<void> {
  return eachZeroPiece(length, (zeros, rel) => storage.write(zeros, offset + rel), piece);
}

/**
 * Writes pieces of `buf` to `storage` (`from` in the buffer, `to` in the
 * store): in one call where the store can (writeSpans), else one write each.
 */
export async function writeSpansTo(
  storage: Storage,
  buf: Uint8Array,
  spans: readonly CopySpan[],
): Promise<void> {
  if (storage.writeSpans) return storage.writeSpans(buf, spans);
  for (const sp of spans) await storage.write(buf.subarray(sp.from, sp.from + sp.length), sp.to);
}

/** Bytes [offset, offset+length) of a store. */
export interface StoreRange {
  offset: number;
  length: number;
}

/**
 * Copies the spans; blocks of `zeroBlock` bytes (absolute multiples on the
 * destination) that read as all zeros are skipped, not written. `zeroRuns`
 * says where they are on the destination (adjacent ones merged): whoever
 * allocated that space for the copy may give it back.
 */
export type SpanCopier = (
  spans: readonly CopySpan[],
  zeroBlock: number,
) => Promise<{ written: number; skipped: number; zeroRuns: StoreRange[] }>;

/**
 * A run of sector reads from one host file into another, made in one call
 * (rescue's synchronous path; see RescueSyncIo.readSectors): the direction,
 * whether the first bad sector ends the run, whether all-zero sectors are left
 * unwritten, where a sector goes (its position + dstDelta), and the time the
 * run may take.
 */
export interface SectorRunOptions {
  forward: boolean;
  stopOnError: boolean;
  sparse: boolean;
  dstDelta: number;
  maxMs: number;
}

export interface SectorRun {
  /** Where reading stopped: every sector between the start (from, or to backward) and here was read once. */
  reached: number;
  /** Bytes read without error. */
  good: number;
  /** Positions of the sectors that failed, in reading order. */
  bad: number[];
  writeError?: Error;
  /** The source went away (EGONE) at `reached`: that sector was not tried, and the run must stop. */
  readError?: Error;
}

export interface StorageExtent {
  offset: number;
  length: number;
  /** `hole` reads as zeros without being stored. */
  kind: 'data' | 'hole';
}

/** How to open a Storage. */
export interface OpenMode {
  /** Open for writing (exclusive lock unless `lock: 'none'`). */
  write: boolean;
  /** `auto`: exclusive for writers, shared for readers (QEMU-compatible). */
  lock?: 'auto' | 'none';
  /** O_DIRECT reads (block devices: exact bad-sector records). */
  direct?: boolean;
}

/**
 * The host: how the formats and operations reach files without importing node:fs.
 * Implemented in storage/host.ts; tests may provide an in-memory one.
 */
export interface Host {
  open(path: string, mode: OpenMode): Promise<Storage>;
  /** Create a new store; fails with EEXIST unless `force`. */
  create(path: string, options: { force?: boolean; lock?: 'auto' | 'none' }): Promise<Storage>;
  exists(path: string): Promise<boolean>;
  remove(path: string): Promise<void>;
  /** Resolve `name` (as written inside an image) against the directory of `base`. */
  resolve(base: string, name: string): string;
  /** Rename atomically (used for `.partial` destinations and mapfiles). */
  rename(from: string, to: string): Promise<void>;
}
