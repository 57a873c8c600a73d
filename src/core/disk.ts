/**
 * Disk: what a guest sees. A fixed virtual size, positional reads and writes of
 * whole byte ranges, and `extents()`, which tells for every byte whether it is
 *
 *   status | meaning
 *   -------|---------------------------------------------------------------
 *   data   | stored in this image (may still contain zeros)
 *   zero   | reads as zeros, known without reading (qcow2 zero cluster, raw hole)
 *   hole   | nothing here: read it from the disk below (at the bottom: zeros)
 *
 * A driver implements the small `DiskImpl`; `toDisk()` wraps it with the bounds,
 * read-only and closed checks and supplies the fallbacks (principle 2).
 */
import { PlatterError } from './errors.js';
import type { Storage } from './storage.js';

export type Status = 'data' | 'zero' | 'hole';

export interface Extent {
  offset: number;
  length: number;
  status: Status;
  /** 0 = this image; n = the n-th backing image below it. */
  depth: number;
}

/**
 * Where a layer keeps a range of the virtual disk verbatim on the host:
 * [offset, offset+length) of the disk is [at, at+length) of `storage`.
 */
export interface HostSpan {
  offset: number;
  length: number;
  storage: Storage;
  at: number;
}

/**
 * `read`: the bytes are read from these spans; `write`: a write() of the range
 * would land exactly there, changing nothing else (no allocation, no
 * copy-on-write, no metadata); `allocate`: the layer allocates the range now
 * (new clusters or blocks, mapped at once) and the caller then writes every
 * byte of it at these spans itself, before anything reads it (the copy
 * engine into a new image).
 */
export type HostSpanPurpose = 'read' | 'write' | 'allocate';

export interface SnapshotInfo {
  id: string;
  name: string;
  vmStateSize: number;
  /** Seconds since the epoch. */
  date: number;
  vmClock: number;
  size?: number;
}

/** What `info` shows about one layer. */
export interface FormatInfo {
  /** Driver name: raw, qcow2, vmdk, vhd, vhdx, vdi, ewf. */
  format: string;
  subformat?: string;
  /** Allocation unit in bytes: cluster, grain or block. */
  granularity?: number;
  /** The backing file as recorded in the image. */
  backing?: { name: string; format?: string };
  snapshots?: SnapshotInfo[];
  dirty?: boolean;
  corrupt?: boolean;
  /** Format-specific facts (camelCase keys, plain numbers), shown by `info`. */
  details?: Record<string, unknown>;
}

export interface CheckResult {
  /** Metadata errors (after repair: those left). */
  corruptions: number;
  /** Allocated but unreferenced space (after repair: those left). */
  leaks: number;
  /** What a repair fixed. */
  repaired?: { corruptions: number; leaks: number };
  /** One line per problem, naming the field and the value. */
  messages: string[];
  /** Format-specific figures (allocated clusters, fragmentation, ...). */
  details?: Record<string, unknown>;
}

/**
 * Format-specific abilities, as data: an operation asks `disk.features.x` and
 * says clearly when it is absent (principle: no NotCapable exceptions).
 */
export interface DiskFeatures {
  check?(opts: { repair: 'none' | 'leaks' | 'all' }): Promise<CheckResult>;
  /** check() repairs what it finds when asked (repair: leaks or all); else it only reports. */
  repairs?: boolean;
  /**
   * Whole granules written at once are stored better (qcow2 compression packs
   * only whole clusters): a copy widens its data ranges to whole granules,
   * zeros around the data included.
   */
  wholeGranules?: boolean;
  /** Change the virtual size; the Disk must be reopened afterwards. */
  resize?(newSize: number, opts: { shrink: boolean }): Promise<void>;
  snapshots?: {
    list(): Promise<SnapshotInfo[]>;
    create(name: string): Promise<void>;
    /** Revert the active image to the snapshot. */
    apply(name: string): Promise<void>;
    delete(name: string): Promise<void>;
  };
  /** Rewrite the recorded backing file (rebase -u, commit); null removes it. */
  setBacking?(backing: { name: string; format?: string } | null): Promise<void>;
  /** Make the image empty (all `hole`) after commit. */
  makeEmpty?(): Promise<void>;
  /** Forensic images being written (EWF): what an acquisition stores inside the image. */
  evidence?: {
    /** Unreadable source ranges in bytes (EWF error2); call before close. */
    recordUnreadable(ranges: ReadonlyArray<{ offset: number; length: number }>): void;
    /**
     * Call before the first write: at close the image takes its stored hashes
     * (hex) from `get` instead of hashing the content again. Returns false if
     * the image must hash itself (e.g. it pads the content).
     */
    supplyHashes(get: () => { md5: string; sha1?: string }): boolean;
  };
}

/** The minimum a driver (or layer) provides. */
export interface DiskImpl {
  readonly size: number;
  /**
   * COW unit: a partial write into a `hole` of this size is first filled from
   * below by the chain (core/chain.ts). Defaults to 512.
   */
  readonly granularity?: number;
  /** Fill `buf` from `offset`. Holes read as zeros here (the chain reads below). */
  read(buf: Uint8Array, offset: number): Promise<void>;
  write?(buf: Uint8Array, offset: number): Promise<void>;
  /**
   * Make a range read as zeros in this layer (status `zero` or `data`; `hole`
   * would expose a backing disk, so only an image without one may answer with
   * holes); `mayUnmap` allows freeing space.
   */
  writeZeroes?(offset: number, length: number, opts: { mayUnmap: boolean }): Promise<void>;
  /** Discard: the range may afterwards read as zeros or as what lies below. */
  discard?(offset: number, length: number): Promise<void>;
  /**
   * Extents starting exactly at `offset`, in order, without gaps; may cover less
   * than `length` (at least one byte) or more (the excess is clipped).
   * Default: all `data`.
   */
  extents?(offset: number, length: number): Promise<Extent[]>;
  /**
   * Host spans that tile [offset, offset+length) in order (see HostSpan), or
   * null when some of the range is not kept verbatim in this layer for that
   * purpose (a hole, a zero or compressed cluster, an unallocated block). Lets
   * the copy engine hand whole ranges to the host's copier. Default: null.
   */
  hostSpans?(offset: number, length: number, purpose: HostSpanPurpose): Promise<HostSpan[] | null>;
  flush?(): Promise<void>;
  close?(): Promise<void>;
  info?(): Promise<FormatInfo>;
  /** Host stores this layer is made of (for info, locking, allocated size). */
  readonly storages?: readonly Storage[];
  readonly features?: DiskFeatures;
}

export interface Disk {
  readonly name: string;
  readonly size: number;
  readonly readOnly: boolean;
  readonly granularity: number;
  /** The images of the chain, this one first; empty for the zero disk. */
  readonly layers: readonly Disk[];
  readonly storages: readonly Storage[];
  /** The top layer's format-specific abilities. */
  readonly features: DiskFeatures;
  read(buf: Uint8Array, offset: number): Promise<void>;
  write(buf: Uint8Array, offset: number): Promise<void>;
  writeZeroes(offset: number, length: number, opts?: { mayUnmap?: boolean }): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  /** Extents that tile [offset, offset+length) exactly, adjacent equal ones merged. */
  extents(offset: number, length: number): Promise<Extent[]>;
  /** See DiskImpl.hostSpans; null for a read-only disk asked for `write` or `allocate`. */
  hostSpans(offset: number, length: number, purpose: HostSpanPurpose): Promise<HostSpan[] | null>;
  flush(): Promise<void>;
  close(): Promise<void>;
  info(): Promise<FormatInfo>;
}

export interface ToDiskOptions {
  name: string;
  readOnly: boolean;
  /** Set by stack(): the layers of a chain. */
  layers?: readonly Disk[];
}

const ZERO_CHUNK = 1 << 20;

/** Wraps a driver's DiskImpl into a checked Disk (principle 2 and 3). */
export function toDisk(impl: DiskImpl, opts: ToDiskOptions): Disk {
  let closed = false;
  const { name, readOnly } = opts;
  const size = impl.size;

  const check = (offset: number, length: number, writing: boolean): void => {
    if (closed) throw new PlatterError('ECLOSED', `${name}: disk is closed`);
    if (writing && readOnly) throw new PlatterError('EREADONLY', `${name}: image is open read-only`);
    if (!Number.isSafeInteger(offset) || !Number.isSafeInteger(length) || offset < 0 || length < 0) {
      throw new PlatterError('ERANGE', `${name}: invalid range offset ${offset} length ${length}`);
    }
    if (offset + length > size) {
      throw new PlatterError(
        'ERANGE',
        `${name}: range ${offset}+${length} is past the end of the disk (size ${size})`,
      );
    }
  };

  const writeImpl = impl.write?.bind(impl);

  const disk: Disk = {
    name,
    size,
    readOnly,
    granularity: impl.granularity ?? 512,
    get layers() {
      return opts.layers ?? [disk];
    },
    storages: impl.storages ?? [],
    features: impl.features ?? {},
    async read(buf, offset) {
      check(offset, buf.length, false);
      if (buf.length === 0) return;
      await impl.read(buf, offset);
    },
    async write(buf, offset) {
      check(offset, buf.length, true);
      if (buf.length === 0) return;
      if (!writeImpl) throw new PlatterError('EUNSUPPORTED', `${name}: this image cannot be written`);
      await writeImpl(buf, offset);
    },
    async writeZeroes(offset, length, o = {}) {
      check(offset, length, true);
      if (length === 0) return;
      if (impl.writeZeroes) return impl.writeZeroes(offset, length, { mayUnmap: o.mayUnmap ?? false });
      if (!writeImpl) throw new PlatterError('EUNSUPPORTED', `${name}: this image cannot be written`);
      const zeros = new Uint8Array(Math.min(length, ZERO_CHUNK));
      for (let done = 0; done < length; done += zeros.length) {
        const n = Math.min(zeros.length, length - done);
        await writeImpl(zeros.subarray(0, n), offset + done);
      }
    },
    async discard(offset, length) {
      check(offset, length, true);
      if (length === 0) return;
      // Without a discard a no-op is correct: discarded data may read as before.
      if (impl.discard) await impl.discard(offset, length);
    },
    async extents(offset, length) {
      check(offset, length, false);
      if (length === 0) return [];
      if (!impl.extents) return [{ offset, length, status: 'data', depth: 0 }];
      return collectExtents(name, impl.extents.bind(impl), offset, length);
    },
    async hostSpans(offset, length, purpose) {
      check(offset, length, false);
      if (!impl.hostSpans || length === 0 || (purpose !== 'read' && readOnly)) return null;
      return impl.hostSpans(offset, length, purpose);
    },
    async flush() {
      if (closed) throw new PlatterError('ECLOSED', `${name}: disk is closed`);
      await impl.flush?.();
    },
    async close() {
      if (closed) return;
      closed = true;
      await impl.close?.();
    },
    async info() {
      return impl.info ? impl.info() : { format: 'unknown' };
    },
  };
  return disk;
}

/**
 * Calls a driver's extents() until [offset, offset+length) is tiled, clipping,
 * validating and merging what it returns.
 */
async function collectExtents(
  name: string,
  fn: (offset: number, length: number) => Promise<Extent[]>,
  offset: number,
  length: number,
): Promise<Extent[]> {
  const out: Extent[] = [];
  const end = offset + length;
  let pos = offset;
  while (pos < end) {
    const got = await fn(pos, end - pos);
    if (got.length === 0) throw new Error(`internal error: ${name}: extents() returned nothing at ${pos}`);
    for (const e of got) {
      if (pos >= end) break;
      if (e.offset !== pos || e.length <= 0) {
        throw new Error(
          `internal error: ${name}: extents() gap or overlap at ${pos} (got ${e.offset}+${e.length})`,
        );
      }
      const len = Math.min(e.length, end - pos);
      pushExtent(out, { offset: pos, length: len, status: e.status, depth: e.depth });
      pos += len;
    }
  }
  return out;
}

/** Appends an extent, merging it into the previous one when status and depth agree. */
export function pushExtent(out: Extent[], e: Extent): void {
  const last = out[out.length - 1];
  if (last && last.status === e.status && last.depth === e.depth && last.offset + last.length === e.offset) {
    last.length += e.length;
  } else {
    out.push({ ...e });
  }
}
