/**
 * Split storage: one Storage over an ordered list of segment Storages, their
 * bytes concatenated (a split raw set `disk.001, disk.002, …`; later users: VMDK
 * `-s001.vmdk` extents, EWF-like segment files).
 *
 * API
 *   splitStorage(name, segments, opts?)   the concatenation of already-open segments.
 *       opts.segmentSize + opts.createSegment(index): a writer that fills the last
 *       segment up to segmentSize and then creates the next one (rollover);
 *       without them only the last segment may grow.
 *   openSplit(firstPath, mode)            NAME.000/NAME.001 (3+ digits) and every
 *       following NAME.002, … as one Storage; a missing or short middle segment is
 *       an error naming it. nodeHost.open() calls it for such names.
 *   createSplit(host, firstPath, segmentSize, { force, lock })
 *       a new, empty split set for writing: creates NAME.001 (firstPath) now and
 *       NAME.002, … as writes pass each segmentSize bytes (acquire -O split).
 *       Without force any existing segment of the name is an EEXIST error; with
 *       force, stale later segments of an older set are removed first.
 *   splitName(path) / segmentPath(split, index)   the numbering: the width of the
 *       digits is kept (disk.009 -> disk.010) and grows after 999 (disk.1000).
 *
 * Storage.files lists every segment path, in order (it grows with rollover).
 */
import { constants } from 'node:fs';
import { basename, dirname } from 'node:path';
import { PlatterError } from '../core/errors.js';
import { Mutex } from '../core/mutex.js';
import { type Host, type OpenMode, type Storage, type StorageExtent, writeZerosTo } from '../core/storage.js';
import { hostError } from './errors.js';
import { openFile } from './file.js';
import { fsReaddir, fsRemove } from './fs-calls.js';

export interface SplitName {
  /** Everything before the number, including the dot: `/x/disk.` */
  prefix: string;
  index: number;
  width: number;
}

/** `disk.001` -> { prefix: 'disk.', index: 1, width: 3 }; undefined without a 3+ digit suffix. */
export function splitName(path: string): SplitName | undefined {
  const m = /^(.*\.)(\d{3,})$/.exec(path);
  if (!m) return undefined;
  return { prefix: m[1], index: Number(m[2]), width: m[2].length };
}

export function segmentPath(s: SplitName, index: number): string {
  return s.prefix + String(index).padStart(s.width, '0');
}

/** Whether nodeHost.open(path) treats `path` as the first segment of a set. */
export function isFirstSegment(path: string): boolean {
  const s = splitName(path);
  return s !== undefined && s.index <= 1;
}

export interface SplitOptions {
  /** Rollover size for writers: the last segment never grows past it. */
  segmentSize?: number;
  /** Create segment number `n` (0-based position in the set) when a write needs it. */
  createSegment?: (n: number) => Promise<Storage>;
  /** Delete a segment file that a shrinking truncate emptied (the first is always kept). */
  removeSegment?: (path: string) => Promise<void>;
  /** Release resources beyond the segments (called once by close). */
  onClose?: () => Promise<void>;
}

/** One Storage over `segments` (see the header). Takes ownership: close() closes them. */
export async function splitStorage(
  name: string,
  segments: Storage[],
  opts: SplitOptions = {},
): Promise<Storage> {
  if (segments.length === 0) throw new Error('internal error: a split storage needs a segment');
  const segs = [...segments];
  const sizes = await Promise.all(segs.map((s) => s.size()));
  const { segmentSize, createSegment } = opts;
  const rollover = segmentSize !== undefined && createSegment !== undefined;
  const growth = new Mutex();
  let closed = false;

  const total = (): number => sizes.reduce((a, b) => a + b, 0);
  const checkOpen = (): void => {
    if (closed) throw new PlatterError('ECLOSED', `${name}: storage is closed`);
  };
  const checkWritable = (): void => {
    checkOpen();
    if (segs[0].readOnly) throw new PlatterError('EREADONLY', `${name}: opened read-only`);
  };

  /** Where each segment starts (recomputed: sets have few segments). */
  const startOf = (i: number): number => {
    let s = 0;
    for (let k = 0; k < i; k++) s += sizes[k];
    return s;
  };

  /**
   * Calls fn(segment, index, offsetInSegment, start, end) for the pieces of
   * [offset, offset+length) that lie in existing segments; the last segment
   * takes everything past its start (it may grow).
   */
  async function forPieces(
    offset: number,
    length: number,
    fn: (i: number, segOffset: number, from: number, to: number) => Promise<void>,
  ): Promise<void> {
    let start = 0;
    const end = offset + length;
    for (let i = 0; i < segs.length && start < end; i++) {
      const last = i === segs.length - 1;
      const segEnd = last ? Number.POSITIVE_INFINITY : start + sizes[i];
      const from = Math.max(offset, start);
      const to = Math.min(end, segEnd);
      if (from < to) await fn(i, from - start, from - offset, to - offset);
      start = segEnd;
    }
  }

  /** Make the segments reach `end` bytes (writers with rollover). */
  async function ensureCapacity(end: number): Promise<void> {
    if (!rollover || startOf(segs.length - 1) + segmentSize! >= end) return;
    await growth.run(async () => {
      while (startOf(segs.length - 1) + segmentSize! < end) {
        const lastIdx = segs.length - 1;
        if (sizes[lastIdx] < segmentSize!) {
          await segs[lastIdx].truncate(segmentSize!);
          sizes[lastIdx] = segmentSize!;
        }
        const next = await createSegment!(segs.length);
        segs.push(next);
        sizes.push(await next.size());
      }
    });
  }

  /** Runs a per-segment capability, or writes zeros where a segment lacks it. */
  async function perSegment(
    offset: number,
    length: number,
    pick: (s: Storage) => ((o: number, l: number) => Promise<void>) | undefined,
    zerosIfMissing: boolean,
  ): Promise<void> {
    checkWritable();
    if (length === 0) return;
    await ensureCapacity(offset + length);
    await forPieces(offset, length, async (i, segOff, from, to) => {
      const f = pick(segs[i]);
      if (f) await f.call(segs[i], segOff, to - from);
      else if (zerosIfMissing) await writeZerosTo(storage, offset + from, to - from);
      if (i === segs.length - 1) sizes[i] = Math.max(sizes[i], segOff + (to - from));
    });
  }

  const storage: Storage & { zeroRange?: (o: number, l: number) => Promise<void> } = {
    name,
    readOnly: segs[0].readOnly,
    get files() {
      return segs.flatMap((s) => s.files ?? [s.name]);
    },
    async size() {
      checkOpen();
      return total();
    },
    async read(buf, offset) {
      checkOpen();
      if (offset + buf.length > total()) {
        throw new PlatterError(
          'EIO',
          `${name}: read of ${buf.length} bytes at offset ${offset} is past the end of the split set (size ${total()})`,
        );
      }
      await forPieces(offset, buf.length, (i, segOff, from, to) =>
        segs[i].read(buf.subarray(from, to), segOff),
      );
    },
    async write(buf, offset) {
      checkWritable();
      if (buf.length === 0) return;
      await ensureCapacity(offset + buf.length);
      await forPieces(offset, buf.length, async (i, segOff, from, to) => {
        await segs[i].write(buf.subarray(from, to), segOff);
        if (i === segs.length - 1) sizes[i] = Math.max(sizes[i], segOff + (to - from));
      });
    },
    async truncate(size) {
      checkWritable();
      if (size >= total()) {
        await ensureCapacity(size);
        const last = segs.length - 1;
        const want = size - startOf(last);
        if (want > sizes[last]) {
          await segs[last].truncate(want);
          sizes[last] = want;
        }
        return;
      }
      // Shrinking: cut the segment holding the new end; later ones are emptied,
      // and removed when the owner can (a set never keeps empty middle segments).
      let start = 0;
      for (let i = 0; i < segs.length; i++) {
        const keep = Math.max(0, Math.min(sizes[i], size - start));
        start += sizes[i];
        if (keep < sizes[i]) {
          await segs[i].truncate(keep);
          sizes[i] = keep;
        }
      }
      if (opts.removeSegment) {
        while (segs.length > 1 && sizes[segs.length - 1] === 0) {
          const gone = segs.pop()!;
          sizes.pop();
          await gone.close();
          for (const f of gone.files ?? [gone.name]) await opts.removeSegment(f);
        }
      }
    },
    async flush() {
      checkOpen();
      for (const s of segs) await s.flush();
    },
    async close() {
      if (closed) return;
      closed = true;
      let first: unknown;
      for (const s of segs) await s.close().catch((e) => (first ??= e));
      await opts.onClose?.();
      if (first) throw first;
    },
  };

  if (segs[0].extents) {
    storage.extents = async (offset, length) => {
      checkOpen();
      const out: StorageExtent[] = [];
      const covered = Math.min(offset + length, total());
      if (offset < covered) {
        await forPieces(offset, covered - offset, async (i, segOff, from, to) => {
          const s = segs[i];
          const part = s.extents
            ? await s.extents(segOff, to - from)
            : [{ offset: segOff, length: to - from, kind: 'data' as const }];
          for (const e of part) {
            const o = e.offset - segOff + offset + from;
            const prev = out[out.length - 1];
            if (prev && prev.kind === e.kind && prev.offset + prev.length === o) prev.length += e.length;
            else out.push({ offset: o, length: e.length, kind: e.kind });
          }
        });
      }
      if (covered < offset + length) {
        const o = Math.max(offset, covered);
        out.push({ offset: o, length: offset + length - o, kind: 'hole' });
      }
      return out;
    };
  }
  if (segs[0].discard) storage.discard = (o, l) => perSegment(o, l, (s) => s.discard, true);
  const zr = (segs[0] as { zeroRange?: unknown }).zeroRange;
  if (zr) {
    storage.zeroRange = (o, l) =>
      perSegment(o, l, (s) => (s as { zeroRange?: (o: number, l: number) => Promise<void> }).zeroRange, true);
  }
  if (segs[0].allocate) storage.allocate = (o, l) => perSegment(o, l, (s) => s.allocate, true);
  if (segs.every((s) => s.allocatedSize)) {
    storage.allocatedSize = async () => {
      let n = 0;
      for (const s of segs) n += (await s.allocatedSize?.()) ?? 0;
      return n;
    };
  }
  return storage;
}

/** Existing segment numbers of a set, from a directory listing. */
async function listSegments(first: SplitName): Promise<number[]> {
  const dir = dirname(first.prefix + 'x');
  const stem = basename(first.prefix + 'x').slice(0, -1);
  let names: string[];
  try {
    names = await fsReaddir(dir);
  } catch (e) {
    throw hostError(e, dir);
  }
  const out: number[] = [];
  for (const n of names) {
    if (!n.startsWith(stem)) continue;
    const rest = n.slice(stem.length);
    if (!/^\d+$/.test(rest)) continue;
    // Same width, or wider once the numbers outgrow it (disk.999 -> disk.1000).
    if (rest.length !== first.width && !(rest.length > first.width && !rest.startsWith('0'))) continue;
    const idx = Number(rest);
    if (idx >= first.index) out.push(idx);
  }
  return out.sort((a, b) => a - b);
}

/**
 * Opens NAME.000/NAME.001 and the segments after it as one Storage (a single
 * segment is returned as a plain file Storage).
 */
export async function openSplit(firstPath: string, mode: OpenMode): Promise<Storage> {
  const first = splitName(firstPath);
  if (!first) throw new PlatterError('EINVAL', `${firstPath}: not a numbered segment name (like disk.001)`);
  const indices = await listSegments(first).catch(() => [first.index]);
  if (!indices.includes(first.index)) {
    throw new PlatterError('ENOENT', `${firstPath}: no such file or directory`);
  }
  // Contiguous from the first; anything numbered beyond a gap means a missing segment.
  const want: string[] = [];
  for (let i = first.index, k = 0; k < indices.length; i++, k++) {
    if (indices[k] !== i) {
      throw new PlatterError(
        'ENOENT',
        `${segmentPath(first, i)}: segment ${want.length + 1} of the split set ${firstPath} is missing` +
          ` (${segmentPath(first, indices[k])} exists after it)`,
      );
    }
    want.push(segmentPath(first, i));
  }
  if (want.length === 1) return openFile(firstPath, mode);

  const segs: Storage[] = [];
  try {
    for (const p of want) segs.push(await openFile(p, mode));
    const sizes = await Promise.all(segs.map((s) => s.size()));
    const segmentSize = sizes[0];
    if (segmentSize === 0) {
      throw new PlatterError('ECORRUPT', `${want[0]}: first segment of the split set is empty`);
    }
    for (let i = 1; i < segs.length - 1; i++) {
      if (sizes[i] < segmentSize) {
        throw new PlatterError(
          'ECORRUPT',
          `${want[i]}: segment is short: ${sizes[i]} bytes, but the segments before the last are ${segmentSize} bytes (as ${want[0]})`,
        );
      }
    }
    const last = want.length;
    return await splitStorage(firstPath, segs, {
      segmentSize: mode.write ? segmentSize : undefined,
      removeSegment: mode.write ? fsRemove : undefined,
      createSegment: mode.write
        ? async (n) => {
            const p = segmentPath(first, first.index + n);
            return openFile(p, mode, { flags: constants.O_RDWR | constants.O_CREAT, truncate: n >= last });
          }
        : undefined,
    });
  } catch (e) {
    for (const s of segs) await s.close().catch(() => undefined);
    throw e;
  }
}

export interface CreateSplitOptions {
  force?: boolean;
  lock?: 'auto' | 'none';
}

/** A new split set for writing (see the header). */
export async function createSplit(
  host: Host,
  firstPath: string,
  segmentSize: number,
  opts: CreateSplitOptions = {},
): Promise<Storage> {
  const first = splitName(firstPath);
  if (!first) {
    throw new PlatterError(
      'EINVAL',
      `${firstPath}: a split set's first file must end in a number, like disk.001`,
    );
  }
  if (!Number.isSafeInteger(segmentSize) || segmentSize < 512) {
    throw new PlatterError(
      'EINVAL',
      `${firstPath}: segment size ${segmentSize} is too small (at least 512 bytes)`,
    );
  }
  // Existing segments of this name: refused, or (force) removed so no stale tail remains.
  const taken: string[] = [];
  if (await host.exists(firstPath)) taken.push(firstPath);
  for (let i = first.index + 1; await host.exists(segmentPath(first, i)); i++)
    taken.push(segmentPath(first, i));
  if (taken.length > 0 && !opts.force) {
    throw new PlatterError('EEXIST', `${taken[0]}: already exists (use --force to overwrite)`);
  }
  for (const p of taken) if (p !== firstPath) await host.remove(p);
  const head = await host.create(firstPath, { force: opts.force, lock: opts.lock });
  return splitStorage(firstPath, [head], {
    segmentSize,
    removeSegment: (p) => host.remove(p),
    createSegment: (n) =>
      host.create(segmentPath(first, first.index + n), { force: opts.force, lock: opts.lock }),
  });
}
