/**
 * A hosted sparse extent: header, grain directory (GD) of grain-table (GT)
 * sector numbers, grain tables of grain sector numbers (GTEs), grains.
 *
 *   GTE  | meaning for extents()
 *   -----|------------------------------------------------------------
 *   0    | hole: unallocated here (a delta link reads its parent)
 *   1    | zero: a zeroed grain (FLAG_ZERO_GRAIN images)
 *   n>1  | data at sector n (compressed images: a grain marker at n)
 *
 * Two write modes:
 * - in place (monolithicSparse, twoGbMaxExtentSparse): new grains are appended
 *   at a grain-aligned end of file, then the GTE is written to the GT and to
 *   the redundant GT; GTs are preallocated at create time (qemu-img needs
 *   that), and a missing GT is allocated at the end of the file.
 * - append (streamOptimized): grains are deflated (in the thread pool, so on
 *   every core) and appended with their markers; the GTs live in memory and
 *   are written with the GD, footer and end-of-stream marker at close. An
 *   overwritten grain is appended again (the old copy stays as garbage).
 */
import { alignUp, isAllZero, viewOf } from '../../core/bytes.js';
import type { Extent } from '../../core/disk.js';
import { corrupt, PlatterError, unsupported } from '../../core/errors.js';
import { Mutex } from '../../core/mutex.js';
import { eachZeroPiece, type Storage } from '../../core/storage.js';
import { deflate, inflate } from '../../core/zlib.js';
import {
  COMPRESS_DEFLATE,
  FLAG_COMPRESSED,
  FLAG_MARKERS,
  FLAG_RGD,
  FLAG_ZERO_GRAIN,
  GTE_ZEROED,
  MAGIC,
  MARKER_EOS,
  MARKER_FOOTER,
  MARKER_GD,
  MARKER_GT,
  metadataMarker,
  parseHeader,
  parseMarker,
  SECTOR,
  type SparseHeader,
  serializeHeader,
} from './header.js';
import type { VmdkExtent } from './table.js';

/** Limits on header fields (QEMU refuses grains over 1 GiB; real ones are 64 KiB). */
export const MAX_GRAIN_SECTORS = 1 << 17; // 64 MiB
export const MAX_GTES_PER_GT = 4096;
/** Grain tables kept in memory by a read-only extent (8192 x 2 KiB: 16 MiB, 256 GiB of disk). */
const MAX_CACHED_GTS = 8192;
/**
 * Most bytes of back-to-back grain tables loaded by one read: 128 standard GTs,
 * 4 GiB of disk (a cache miss in a huge image reads no more than this).
 */
const GT_BATCH_BYTES = 256 << 10;
/** Bytes of one grain marker header before the compressed data. */
const GRAIN_MARKER = 12;
/** Bytes of decompressed grains kept for small sequential reads of compressed images. */
const GRAIN_CACHE_BYTES = 16 << 20;

export interface OpenedSparse {
  header: SparseHeader;
  /** The header at offset 0 said GD_AT_END and the footer supplied the tables. */
  footer: boolean;
  fileSize: number;
}

/** Reads the header (and, for GD_AT_END, the footer) and checks every field. */
export async function readSparseHeader(storage: Storage, file: string): Promise<OpenedSparse> {
  const fileSize = await storage.size();
  if (fileSize < SECTOR)
    throw corrupt(file, `file size ${fileSize} is smaller than the sparse extent header (512)`);
  const first = new Uint8Array(SECTOR);
  await storage.read(first, 0);
  let header = parseHeader(first, file);
  let footer = false;
  if (header.gdOffsetSectors < 0) {
    if (fileSize < 4 * SECTOR)
      throw corrupt(file, 'streamOptimized footer missing: file too short (cut short?)');
    const tail = new Uint8Array(3 * SECTOR);
    await storage.read(tail, fileSize - tail.length);
    const fm = parseMarker(tail.subarray(0, 16), file);
    const eos = parseMarker(tail.subarray(2 * SECTOR, 2 * SECTOR + 16), file);
    const magicOk = viewOf(tail).getUint32(SECTOR, true) === viewOf(first).getUint32(0, true);
    if (
      fm.size !== 0 ||
      fm.type !== MARKER_FOOTER ||
      !magicOk ||
      eos.val !== 0 ||
      eos.size !== 0 ||
      eos.type !== MARKER_EOS
    ) {
      throw corrupt(
        file,
        'streamOptimized footer or end-of-stream marker missing at end of file (the file is cut short or damaged)',
      );
    }
    header = parseHeader(tail.subarray(SECTOR, 2 * SECTOR), file);
    if (header.gdOffsetSectors < 0) throw corrupt(file, 'footer gdOffset is GD_AT_END too');
    footer = true;
  }
  checkHeader(header, file, fileSize);
  return { header, footer, fileSize };
}

function checkHeader(h: SparseHeader, file: string, fileSize: number): void {
  if (h.version < 1 || h.version > 3)
    throw unsupported(`${file}: sparse extent version ${h.version} is not supported (1 to 3)`);
  if (h.grainSectors < 1 || h.grainSectors > MAX_GRAIN_SECTORS) {
    throw corrupt(file, `grainSize ${h.grainSectors} sectors is out of range (1 to ${MAX_GRAIN_SECTORS})`);
  }
  if (h.numGTEsPerGT < 1 || h.numGTEsPerGT > MAX_GTES_PER_GT) {
    throw corrupt(file, `numGTEsPerGT ${h.numGTEsPerGT} is out of range (1 to ${MAX_GTES_PER_GT})`);
  }
  if (!Number.isSafeInteger(h.capacitySectors * SECTOR))
    throw corrupt(file, `capacity ${h.capacitySectors} sectors is too large`);
  if (h.compressAlgorithm > COMPRESS_DEFLATE) {
    throw unsupported(`${file}: compressAlgorithm ${h.compressAlgorithm} is not supported (only 1, deflate)`);
  }
  if (h.overHeadSectors * SECTOR > fileSize) {
    throw corrupt(
      file,
      `overHead ${h.overHeadSectors} sectors is past end of file (size ${fileSize}; file truncated?)`,
    );
  }
  const numGTs = Math.ceil(h.capacitySectors / (h.grainSectors * h.numGTEsPerGT));
  const checkDir = (at: number, what: string): void => {
    if (numGTs === 0) return;
    if (at === 0 || at * SECTOR + numGTs * 4 > fileSize) {
      throw corrupt(
        file,
        `${what} at sector ${at} (${numGTs} entries) is past end of file (size ${fileSize})`,
      );
    }
  };
  checkDir(h.gdOffsetSectors, 'grain directory');
  if (h.flags & FLAG_RGD && h.rgdOffsetSectors !== 0)
    checkDir(h.rgdOffsetSectors, 'redundant grain directory');
}

async function readU32s(storage: Storage, at: number, count: number): Promise<Uint32Array> {
  const raw = new Uint8Array(count * 4);
  await storage.read(raw, at);
  const v = viewOf(raw);
  const out = new Uint32Array(count);
  for (let i = 0; i < count; i++) out[i] = v.getUint32(i * 4, true);
  return out;
}

function u32Bytes(a: Uint32Array, from = 0, to = a.length): Uint8Array {
  const raw = new Uint8Array((to - from) * 4);
  const v = viewOf(raw);
  for (let i = from; i < to; i++) v.setUint32((i - from) * 4, a[i], true);
  return raw;
}

export interface SparseCheck {
  corruptions: number;
  messages: string[];
  allocatedGrains: number;
  /** Problems fixed by a repair. */
  repaired: number;
}

export class SparseExtent implements VmdkExtent {
  size: number;
  readonly granularity: number;
  readonly grainBytes: number;
  readonly compressed: boolean;
  readonly zeroGrain: boolean;
  header: SparseHeader;
  write?: (buf: Uint8Array, offset: number) => Promise<void>;
  writeZeroes?: (offset: number, length: number, mayUnmap: boolean) => Promise<void>;

  private gd: Uint32Array;
  private rgd?: Uint32Array;
  private readonly gts = new Map<number, Promise<Uint32Array | undefined>>();
  private readonly gtBytes: number;
  private fileSize: number;
  private readonly lock = new Mutex();
  private readonly grainCache = new Map<number, Promise<Uint8Array>>();
  /** streamOptimized: where the next grain goes; undefined until the first write. */
  private appendAt?: number;
  private dirty = false;
  /** Written since the last flush (a read-only user costs no fsync). */
  private changed = false;
  /** streamOptimized: where each GT was last written in this session, and the GTs changed since. */
  private readonly gtAt = new Map<number, number>();
  private readonly gtDirty = new Set<number>();
  /** streamOptimized: the highest GT index grains were appended for (earlier GTs are written out). */
  private openGT = -1;
  /** streamOptimized: writes append in arrival order. */
  private appendChain: Promise<void> = Promise.resolve();

  constructor(
    readonly storage: Storage,
    private readonly file: string,
    opened: OpenedSparse,
    gd: Uint32Array,
    rgd: Uint32Array | undefined,
    writable: boolean,
    /** The storage belongs to the driver (monolithic: it holds the descriptor too). */
    private readonly shared: boolean,
  ) {
    this.header = opened.header;
    this.footer = opened.footer;
    this.fileSize = opened.fileSize;
    this.gd = gd;
    this.rgd = rgd;
    const h = opened.header;
    this.size = h.capacitySectors * SECTOR;
    this.grainBytes = h.grainSectors * SECTOR;
    this.granularity = this.grainBytes;
    this.compressed = h.compressAlgorithm === COMPRESS_DEFLATE || (h.flags & FLAG_COMPRESSED) !== 0;
    this.zeroGrain = (h.flags & FLAG_ZERO_GRAIN) !== 0;
    this.gtBytes = h.numGTEsPerGT * 4;
    if (writable) {
      this.write = (buf, offset) => {
        this.changed = true;
        return this.compressed ? this.writeStream(buf, offset) : this.writeInPlace(buf, offset);
      };
      this.writeZeroes = (offset, length) => {
        this.changed = true;
        return this.zeroRange(offset, length);
      };
    }
  }

  private footer: boolean;

  static async open(
    storage: Storage,
    file: string,
    writable: boolean,
    shared: boolean,
  ): Promise<SparseExtent> {
    const opened = await readSparseHeader(storage, file);
    const h = opened.header;
    const numGTs = Math.ceil(h.capacitySectors / (h.grainSectors * h.numGTEsPerGT));
    const gd = await readU32s(storage, h.gdOffsetSectors * SECTOR, numGTs);
    const rgd =
      h.flags & FLAG_RGD && h.rgdOffsetSectors !== 0 && !(h.flags & FLAG_MARKERS)
        ? await readU32s(storage, h.rgdOffsetSectors * SECTOR, numGTs)
        : undefined;
    const compressed = h.compressAlgorithm === COMPRESS_DEFLATE || (h.flags & FLAG_COMPRESSED) !== 0;
    if (writable && compressed && !(h.flags & FLAG_MARKERS)) {
      throw unsupported(`${file}: compressed sparse extents without markers can only be opened read-only`);
    }
    if (writable && h.version === 3 && h.compressAlgorithm !== COMPRESS_DEFLATE) {
      throw unsupported(
        `${file}: version 3 sparse extents (changed block tracking) can only be opened read-only`,
      );
    }
    return new SparseExtent(storage, file, opened, gd, rgd, writable, shared);
  }

  private get numGTs(): number {
    return this.gd.length;
  }

  private get perGT(): number {
    return this.header.numGTEsPerGT;
  }

  /** The GT for directory index i, or undefined when the GD entry is 0. */
  private gt(i: number): Promise<Uint32Array | undefined> {
    let p = this.gts.get(i);
    if (!p) {
      const sector = this.gd[i];
      if (sector === 0) return Promise.resolve(undefined);
      if (sector * SECTOR + this.gtBytes > this.fileSize) {
        return Promise.reject(
          corrupt(
            this.file,
            `grain directory entry ${i} points to a grain table at sector ${sector}, past end of file (size ${this.fileSize})`,
          ),
        );
      }
      // The GTs that follow this one back to back in the file (as qemu-img and
      // VMware lay them out) and are not loaded yet come in the same read: one
      // trip to the thread pool for up to GT_BATCH_BYTES of tables, not one each.
      const stride = alignUp(this.gtBytes, SECTOR) / SECTOR;
      const most = Math.max(1, Math.floor(GT_BATCH_BYTES / (stride * SECTOR)));
      let n = 1;
      while (
        n < most &&
        i + n < this.numGTs &&
        !this.gts.has(i + n) &&
        this.gd[i + n] === sector + n * stride &&
        (sector + n * stride) * SECTOR + this.gtBytes <= this.fileSize
      ) {
        n++;
      }
      const all = readU32s(this.storage, sector * SECTOR, ((n - 1) * stride * SECTOR + this.gtBytes) / 4);
      const step = (stride * SECTOR) / 4;
      for (let m = 0; m < n; m++) {
        const k = i + m;
        const q = all.then((u) => u.slice(m * step, m * step + this.perGT));
        q.catch(() => this.gts.delete(k));
        this.gts.set(k, q);
        if (m === 0) p = q;
      }
      // Read-only: GTs are only a cache, so bound it (a writer keeps its tables: they hold pending entries).
      while (!this.write && this.gts.size > MAX_CACHED_GTS)
        this.gts.delete(this.gts.keys().next().value as number);
    }
    return p as Promise<Uint32Array | undefined>;
  }

  private async gte(grain: number): Promise<number> {
    const table = await this.gt(Math.floor(grain / this.perGT));
    return table ? table[grain % this.perGT] : 0;
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const end = offset + length;
    const gb = this.grainBytes;
    const gtSpan = gb * this.perGT;
    let pos = offset;
    let steps = 0;
    while (pos < end && steps < 1 << 16) {
      const gi = Math.floor(pos / gb);
      const ti = Math.floor(gi / this.perGT);
      const table = await this.gt(ti);
      if (!table) {
        const n = Math.min((ti + 1) * gtSpan, end) - pos;
        push(out, pos, n, 'hole');
        pos += n;
        steps++;
        continue;
      }
      const tableEnd = Math.min((ti + 1) * gtSpan, end);
      while (pos < tableEnd) {
        const g = Math.floor(pos / gb);
        const e = table[g % this.perGT];
        const n = Math.min((g + 1) * gb, tableEnd) - pos;
        push(out, pos, n, e === 0 ? 'hole' : e === GTE_ZEROED ? 'zero' : 'data');
        pos += n;
        steps++;
      }
    }
    return out;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const gb = this.grainBytes;
    const jobs: Promise<void>[] = [];
    // A run of grains stored back to back in the file: one storage read.
    let run: { at: number; file: number; len: number } | undefined;
    const flushRun = (): void => {
      if (!run) return;
      const r = run;
      jobs.push(this.storage.read(buf.subarray(r.at, r.at + r.len), r.file));
      run = undefined;
    };
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const gi = Math.floor(pos / gb);
      const within = pos - gi * gb;
      const n = Math.min(gb - within, buf.length - done);
      const e = await this.gte(gi);
      const sub = buf.subarray(done, done + n);
      if (e === 0 || e === GTE_ZEROED) {
        flushRun();
        sub.fill(0);
      } else if (this.compressed) {
        flushRun();
        jobs.push(this.grain(e).then((g) => sub.set(g.subarray(within, within + n))));
      } else {
        const at = e * SECTOR + within;
        if (at + n > this.fileSize) {
          throw corrupt(this.file, `grain ${gi} is at sector ${e}, past end of file (size ${this.fileSize})`);
        }
        if (run && run.file + run.len === at) run.len += n;
        else {
          flushRun();
          run = { at: done, file: at, len: n };
        }
      }
      done += n;
    }
    flushRun();
    await Promise.all(jobs);
  }

  /** A compressed grain, decompressed to grainBytes. */
  private grain(sector: number): Promise<Uint8Array> {
    let p = this.grainCache.get(sector);
    if (!p) {
      p = this.readCompressed(sector);
      this.grainCache.set(sector, p);
      p.catch(() => this.grainCache.delete(sector));
      if (this.grainCache.size > Math.max(1, GRAIN_CACHE_BYTES / this.grainBytes))
        this.grainCache.delete(this.grainCache.keys().next().value as number);
    }
    return p;
  }

  private async readCompressed(sector: number): Promise<Uint8Array> {
    const gb = this.grainBytes;
    const at = sector * SECTOR;
    const limit = gb + (gb >> 3) + 4096; // deflate never grows data by more than this
    let data: Uint8Array;
    if (this.header.flags & FLAG_MARKERS) {
      if (at + GRAIN_MARKER > this.fileSize) {
        throw corrupt(
          this.file,
          `compressed grain at sector ${sector} is past end of file (size ${this.fileSize})`,
        );
      }
      // One read for marker and data: the size is not known yet, so read as much as a grain can take.
      const span = new Uint8Array(Math.min(GRAIN_MARKER + limit, this.fileSize - at));
      await this.storage.read(span, at);
      const size = viewOf(span).getUint32(8, true);
      if (size === 0 || size > limit || GRAIN_MARKER + size > span.length) {
        throw corrupt(
          this.file,
          `compressed grain at sector ${sector} has size ${size} (limit ${limit}, file size ${this.fileSize})`,
        );
      }
      data = span.subarray(GRAIN_MARKER, GRAIN_MARKER + size);
    } else {
      const size = Math.min(limit, this.fileSize - at);
      if (size <= 0)
        throw corrupt(
          this.file,
          `compressed grain at sector ${sector} is past end of file (size ${this.fileSize})`,
        );
      data = new Uint8Array(size);
      await this.storage.read(data, at);
    }
    let out: Uint8Array;
    try {
      // One output chunk for the whole grain: one trip to the thread pool, not one per 16 KiB.
      out = await inflate(data, {
        chunkSize: Math.max(16384, gb),
        maxOutputLength: gb,
        finishFlush: 2 /* Z_SYNC_FLUSH: tolerate trailing padding */,
      });
    } catch (e) {
      throw corrupt(
        this.file,
        `compressed grain at sector ${sector} does not decompress: ${(e as Error).message}`,
      );
    }
    if (out.length === gb) return out;
    const full = new Uint8Array(gb);
    full.set(out);
    return full;
  }

  // ---- in-place writes (monolithicSparse, twoGbMaxExtentSparse) ----

  private async writeInPlace(buf: Uint8Array, offset: number): Promise<void> {
    await this.lock.run(() => this.writeLocked(buf, offset, false));
  }

  /** Writes under the lock; `zeroMark` sets whole grains to GTE_ZEROED instead of writing data. */
  private async writeLocked(buf: Uint8Array, offset: number, zeroMark: boolean): Promise<void> {
    const gb = this.grainBytes;
    const pieces: Array<{ file: number; data: Uint8Array }> = [];
    // GTEs change only after the data is written, so a concurrent reader never follows a GTE to unwritten space.
    const marks: Array<[Uint32Array, number, number]> = [];
    const touched = new Map<number, [number, number]>(); // GT index -> [first, last+1] entry
    const mark = (gi: number, value: number, table: Uint32Array): void => {
      const ti = Math.floor(gi / this.perGT);
      const j = gi % this.perGT;
      marks.push([table, j, value]);
      const r = touched.get(ti);
      touched.set(ti, r ? [Math.min(r[0], j), Math.max(r[1], j + 1)] : [j, j + 1]);
    };
    for (let done = 0; done < buf.length; ) {
      const pos = offset + done;
      const gi = Math.floor(pos / gb);
      const within = pos - gi * gb;
      const n = Math.min(gb - within, buf.length - done);
      const sub = buf.subarray(done, done + n);
      done += n;
      const table = await this.tableForWrite(Math.floor(gi / this.perGT));
      const e = table[gi % this.perGT];
      const wholeGrain = within === 0 && (n === gb || pos + n === this.size);
      if (zeroMark && wholeGrain) {
        if (e !== GTE_ZEROED) mark(gi, GTE_ZEROED, table);
        continue;
      }
      if (e > GTE_ZEROED) {
        pieces.push({ file: e * SECTOR + within, data: sub });
        continue;
      }
      // A new grain at the end of the file, zero-filled around the data.
      let data = sub;
      if (n !== gb) {
        data = new Uint8Array(gb);
        data.set(sub, within);
      }
      // fileSize moves now, so a GT allocated later in this loop goes after this grain.
      const at = alignUp(this.fileSize, gb);
      if (at / SECTOR >= 2 ** 32) throw tooBig(this.file);
      pieces.push({ file: at, data });
      mark(gi, at / SECTOR, table);
      this.fileSize = at + gb;
    }
    await this.writePieces(pieces);
    for (const [table, j, value] of marks) table[j] = value;

    await Promise.all([...touched].map(([ti, [a, b]]) => this.writeGTEs(ti, a, b)));
  }

  /** Writes pieces, joining those that are adjacent in the file. */
  private async writePieces(pieces: Array<{ file: number; data: Uint8Array }>): Promise<void> {
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < pieces.length; ) {
      let j = i + 1;
      let len = pieces[i].data.length;
      while (j < pieces.length && pieces[j].file === pieces[i].file + len) {
        len += pieces[j].data.length;
        j++;
      }
      jobs.push(this.storage.write(joined(pieces.slice(i, j).map((p) => p.data)), pieces[i].file));
      i = j;
    }
    await Promise.all(jobs);
  }

  private async writeGTEs(ti: number, a: number, b: number): Promise<void> {
    const table = await this.gt(ti);
    if (!table) throw new Error('internal error: GT vanished');
    const bytes = u32Bytes(table, a, b);
    // Both copies at once (one trip to the thread pool, not two): they are
    // independent, and the grains they point to are already written.
    const gtWrite = this.storage.write(bytes, this.gd[ti] * SECTOR + a * 4);
    if (this.rgd && this.rgd[ti] !== 0) {
      const rgtWrite = this.storage.write(bytes, this.rgd[ti] * SECTOR + a * 4);
      await Promise.all([gtWrite, rgtWrite]);
    } else await gtWrite;
  }

  /** The GT for index ti, allocating it (and its redundant copy) at the end of the file if missing. */
  private async tableForWrite(ti: number): Promise<Uint32Array> {
    const have = await this.gt(ti);
    if (have) return have;
    const gtSpace = alignUp(this.gtBytes, SECTOR);
    let at = alignUp(this.fileSize, SECTOR);
    const zeros = new Uint8Array(gtSpace);
    await this.storage.write(zeros, at);
    this.gd[ti] = at / SECTOR;
    await this.storage.write(u32Bytes(this.gd, ti, ti + 1), this.header.gdOffsetSectors * SECTOR + ti * 4);
    at += gtSpace;
    if (this.rgd) {
      await this.storage.write(zeros, at);
      this.rgd[ti] = at / SECTOR;
      await this.storage.write(
        u32Bytes(this.rgd, ti, ti + 1),
        this.header.rgdOffsetSectors * SECTOR + ti * 4,
      );
      at += gtSpace;
    }
    this.fileSize = at;
    const table = new Uint32Array(this.perGT);
    this.gts.set(ti, Promise.resolve(table));
    return table;
  }

  /**
   * Discard: whole grains go back to GTE 0 (a hole: the parent shows, or zeros);
   * their space is not reclaimed. Partial grains are left as they are.
   */
  async discard(offset: number, length: number): Promise<void> {
    const gb = this.grainBytes;
    const first = Math.ceil(offset / gb);
    const end =
      offset + length === this.size ? Math.ceil(this.size / gb) : Math.floor((offset + length) / gb);
    if (end <= first) return;
    this.changed = true;
    if (this.compressed) {
      // In stream order, after the writes already queued.
      const prev = this.appendChain;
      const mine = (async () => {
        await prev;
        await this.lock.run(async () => {
          await this.startAppend();
          for (let gi = first; gi < end; gi++) {
            const ti = Math.floor(gi / this.perGT);
            const table = (await this.gt(ti)) as Uint32Array;
            if (table[gi % this.perGT] === 0) continue;
            table[gi % this.perGT] = 0;
            this.gtDirty.add(ti);
          }
        });
      })();
      this.appendChain = mine.catch(() => undefined);
      return mine;
    }
    await this.lock.run(async () => {
      for (let ti = Math.floor(first / this.perGT); ti * this.perGT < end; ti++) {
        const table = await this.gt(ti);
        if (!table) continue;
        const a = Math.max(first - ti * this.perGT, 0);
        const b = Math.min(end - ti * this.perGT, this.perGT);
        if (!table.subarray(a, b).some((e) => e !== 0)) continue;
        table.fill(0, a, b);
        await this.writeGTEs(ti, a, b);
      }
    });
  }

  private async zeroRange(offset: number, length: number): Promise<void> {
    await eachZeroPiece(length, (zeros, d) =>
      this.compressed
        ? this.writeStream(zeros, offset + d)
        : this.lock.run(() => this.writeLocked(zeros, offset + d, this.zeroGrain)),
    );
  }

  // ---- append writes (streamOptimized) ----

  /** Loads every GT and finds where appending starts: the trailing metadata is dropped and rewritten at close. */
  private async startAppend(): Promise<void> {
    if (this.appendAt !== undefined) return;
    for (let i = 0; i < this.numGTs; i++) {
      if (!(await this.gt(i))) this.gts.set(i, Promise.resolve(new Uint32Array(this.perGT)));
    }
    let tail = this.fileSize;
    if (!this.footer && (await hasFooter(this.storage, this.fileSize))) tail = this.fileSize - 3 * SECTOR;
    if (this.footer) {
      // Metadata (GT/GD markers, footer, EOS) after the last grain can go.
      let meta = this.header.gdOffsetSectors - 1;
      let lastGrain = 0;
      for (let i = 0; i < this.numGTs; i++) {
        if (this.gd[i] !== 0) meta = Math.min(meta, this.gd[i] - 1);
        const t = (await this.gt(i)) as Uint32Array;
        for (const e of t) if (e > lastGrain) lastGrain = e;
      }
      let grainsEnd = 0;
      if (lastGrain > 1) {
        const head = new Uint8Array(GRAIN_MARKER);
        await this.storage.read(head, lastGrain * SECTOR);
        grainsEnd = alignUp(lastGrain * SECTOR + GRAIN_MARKER + viewOf(head).getUint32(8, true), SECTOR);
      }
      tail = Math.max(grainsEnd, meta * SECTOR, this.header.overHeadSectors * SECTOR);
      if (tail > this.fileSize - 3 * SECTOR) tail = this.fileSize - 3 * SECTOR;
    }
    this.appendAt = alignUp(tail, SECTOR);
    // Old GT copies may lie in the part cut off: every GT is written again.
    for (let i = 0; i < this.numGTs; i++) this.gtDirty.add(i);
    this.gtAt.clear();
    this.openGT = -1;
    // Readers must never see an old footer in the middle: cut it now.
    await this.storage.truncate(this.appendAt);
    this.fileSize = this.appendAt;
    this.dirty = true;
  }

  /**
   * Grains are compressed as soon as a write arrives (so several writes use
   * several cores) but appended in the order the writes arrived: a caller
   * writing in ascending order gets grains in ascending LBA order, as a
   * sequential stream reader expects.
   */
  private writeStream(buf: Uint8Array, offset: number): Promise<void> {
    const gb = this.grainBytes;
    const end = offset + buf.length;
    const partial = offset % gb !== 0 || (end % gb !== 0 && end !== this.size);
    const early = partial ? undefined : this.buildGrains(buf, offset);
    early?.catch(() => undefined); // awaited below; this only avoids an unhandled rejection meanwhile
    const prev = this.appendChain;
    const mine = (async () => {
      await prev;
      const grains = early ? await early : await this.buildGrains(buf, offset);
      await this.lock.run(() => this.append(grains));
    })();
    this.appendChain = mine.catch(() => undefined);
    return mine;
  }

  /** The grains a write touches, merged with their old content when partly covered, then deflated. */
  private async buildGrains(
    buf: Uint8Array,
    offset: number,
  ): Promise<Array<{ gi: number; data?: Uint8Array }>> {
    const gb = this.grainBytes;
    const first = Math.floor(offset / gb);
    const last = Math.floor((offset + buf.length - 1) / gb);
    const grains: Array<{ gi: number; raw: Uint8Array }> = [];
    for (let gi = first; gi <= last; gi++) {
      const gStart = gi * gb;
      const a = Math.max(offset, gStart);
      const b = Math.min(offset + buf.length, gStart + gb);
      let raw: Uint8Array;
      if (a === gStart && b === gStart + gb) {
        raw = buf.subarray(a - offset, b - offset);
      } else {
        raw = new Uint8Array(gb);
        if (!(a === gStart && b === this.size)) {
          const e = await this.gte(gi);
          if (e > GTE_ZEROED) raw.set(await this.grain(e));
        }
        raw.set(buf.subarray(a - offset, b - offset), a - gStart);
      }
      grains.push({ gi, raw });
    }
    return Promise.all(
      grains.map(async ({ gi, raw }) =>
        isAllZero(raw) ? { gi } : { gi, data: await deflate(raw, { chunkSize: gb + (gb >> 3) + 4096 }) },
      ),
    );
  }

  /** Appends compressed grains with their markers (caller holds the lock). */
  private async append(grains: Array<{ gi: number; data?: Uint8Array }>): Promise<void> {
    await this.startAppend();
    let at = this.appendAt as number;
    const parts: Uint8Array[] = [];
    const start = at;
    // GTEs change after the grains are written (a concurrent read never sees unwritten space).
    const marks: Array<[Uint32Array, number, number]> = [];
    // As VMware lays a stream out: a GT follows its grains once writing has moved past it.
    if (grains.length > 0) {
      const first = Math.floor(grains[0].gi / this.perGT);
      if (first > this.openGT) {
        for (const b of await this.gtBlocks(at, (i) => i < first)) {
          parts.push(b);
          at += b.length;
        }
      }
      this.openGT = Math.max(this.openGT, Math.floor(grains[grains.length - 1].gi / this.perGT));
    }
    for (const { gi, data } of grains) {
      const table = (await this.gt(Math.floor(gi / this.perGT))) as Uint32Array;
      const j = gi % this.perGT;
      this.gtDirty.add(Math.floor(gi / this.perGT));
      if (!data) {
        marks.push([table, j, 0]);
        continue;
      }
      if (at / SECTOR >= 2 ** 32) throw tooBig(this.file);
      const len = alignUp(GRAIN_MARKER + data.length, SECTOR);
      const rec = new Uint8Array(len);
      const v = viewOf(rec);
      v.setBigUint64(0, BigInt(gi * this.header.grainSectors), true);
      v.setUint32(8, data.length, true);
      rec.set(data, GRAIN_MARKER);
      parts.push(rec);
      marks.push([table, j, at / SECTOR]);
      at += len;
    }
    if (parts.length > 0)
      await this.storage.write(parts.length === 1 ? parts[0] : Buffer.concat(parts), start);
    this.appendAt = at;
    this.fileSize = Math.max(this.fileSize, at);
    for (const [table, j, value] of marks) {
      this.grainCache.delete(table[j]);
      table[j] = value;
    }
  }

  /** streamOptimized close: GT markers and GTs, GD marker and GD, footer, EOS; header says GD_AT_END. */
  /**
   * GT marker + GT for each changed GT that `which` selects, to be written at
   * byte `at`; records where each went. An emptied GT is dropped from the GD.
   */
  private async gtBlocks(at: number, which: (i: number) => boolean): Promise<Uint8Array[]> {
    const gtSectors = alignUp(this.gtBytes, SECTOR) / SECTOR;
    const out: Uint8Array[] = [];
    for (const i of [...this.gtDirty].filter(which).sort((x, y) => x - y)) {
      this.gtDirty.delete(i);
      const t = (await this.gt(i)) as Uint32Array;
      if (!t.some((e) => e !== 0)) {
        this.gtAt.delete(i);
        continue;
      }
      out.push(metadataMarker(MARKER_GT, gtSectors));
      at += SECTOR;
      this.gtAt.set(i, at / SECTOR);
      const body = new Uint8Array(gtSectors * SECTOR);
      body.set(u32Bytes(t));
      out.push(body);
      at += body.length;
    }
    return out;
  }

  /** streamOptimized close: the remaining GTs, GD marker and GD, footer, EOS; header says GD_AT_END. */
  private async finishStream(): Promise<void> {
    let at = this.appendAt as number;
    const parts: Uint8Array[] = [];
    const start = at;
    const push = (b: Uint8Array): void => {
      parts.push(b);
      at += b.length;
    };
    for (const b of await this.gtBlocks(at, () => true)) push(b);
    const gd = new Uint32Array(this.numGTs);
    for (const [i, sector] of this.gtAt) if (i < this.numGTs) gd[i] = sector;
    const gdSectors = Math.max(1, alignUp(this.numGTs * 4, SECTOR) / SECTOR);
    push(metadataMarker(MARKER_GD, gdSectors));
    const gdSector = at / SECTOR;
    const gdBody = new Uint8Array(gdSectors * SECTOR);
    gdBody.set(u32Bytes(gd));
    push(gdBody);
    push(metadataMarker(MARKER_FOOTER, 1));
    const h: SparseHeader = {
      ...this.header,
      gdOffsetSectors: gdSector,
      rgdOffsetSectors: 0,
      flags: this.header.flags & ~FLAG_RGD,
    };
    push(serializeHeader(h));
    push(metadataMarker(MARKER_EOS, 0));
    await this.storage.write(Buffer.concat(parts), start);
    await this.storage.truncate(at);
    await this.storage.write(serializeHeader({ ...h, gdOffsetSectors: -1 }), 0);
    this.gd = gd;
    this.header = h;
    this.footer = true;
    this.fileSize = at;
    this.appendAt = undefined;
    this.dirty = false;
    this.gts.clear();
    this.gtAt.clear();
    this.gtDirty.clear();
    this.openGT = -1;
  }

  // ---- resize ----

  /**
   * Changes the capacity. Growing needs more GTs: a new GD (and redundant GD)
   * with the new GTs is written at the end of the file and the header points
   * to it. Shrinking clears the GTEs past the new end so a later grow cannot
   * bring old data back.
   */
  async resize(newSectors: number): Promise<void> {
    this.changed = true;
    await this.lock.run(async () => {
      const h = this.header;
      const perGTSectors = h.grainSectors * this.perGT;
      const newGTs = Math.ceil(newSectors / perGTSectors);
      const grainsKept = Math.ceil(newSectors / h.grainSectors);
      if (this.compressed) {
        await this.startAppend();
        for (let i = 0; i < this.numGTs; i++) {
          const t = (await this.gt(i)) as Uint32Array;
          for (let j = 0; j < this.perGT; j++) if (i * this.perGT + j >= grainsKept) t[j] = 0;
        }
        const gd = new Uint32Array(newGTs);
        gd.set(this.gd.subarray(0, Math.min(newGTs, this.numGTs)));
        this.gd = gd;
        for (let i = 0; i < newGTs; i++)
          if (!this.gts.has(i)) this.gts.set(i, Promise.resolve(new Uint32Array(this.perGT)));
        for (const k of [...this.gts.keys()]) if (k >= newGTs) this.gts.delete(k);
        for (let i = 0; i < newGTs; i++) this.gtDirty.add(i);
        for (const k of [...this.gtDirty]) if (k >= newGTs) this.gtDirty.delete(k);
        for (const k of [...this.gtAt.keys()]) if (k >= newGTs) this.gtAt.delete(k);
        this.header = { ...h, capacitySectors: newSectors };
        this.size = newSectors * SECTOR;
        return;
      }
      // Clear entries past the new end in the GTs that stay.
      for (let i = 0; i < Math.min(newGTs, this.numGTs); i++) {
        const t = await this.gt(i);
        if (!t) continue;
        const from = Math.max(0, grainsKept - i * this.perGT);
        if (from < this.perGT && t.subarray(from).some((e) => e !== 0)) {
          t.fill(0, from);
          await this.writeGTEs(i, from, this.perGT);
        }
      }
      let gdAt = h.gdOffsetSectors;
      let rgdAt = h.rgdOffsetSectors;
      if (newGTs > this.numGTs) {
        const gtSpace = alignUp(this.gtBytes, SECTOR);
        const dirSpace = alignUp(newGTs * 4, SECTOR);
        let at = alignUp(this.fileSize, SECTOR);
        const gd = new Uint32Array(newGTs);
        gd.set(this.gd);
        const rgd = this.rgd ? new Uint32Array(newGTs) : undefined;
        if (rgd && this.rgd) rgd.set(this.rgd);
        const blob: Uint8Array[] = [];
        const start = at;
        const add = (n: number): number => {
          blob.push(new Uint8Array(n));
          const here = at;
          at += n;
          return here;
        };
        const rgdPos = rgd ? add(dirSpace) : 0;
        const gdPos = add(dirSpace);
        for (let i = this.numGTs; i < newGTs; i++) {
          gd[i] = add(gtSpace) / SECTOR;
          if (rgd) rgd[i] = add(gtSpace) / SECTOR;
          this.gts.set(i, Promise.resolve(new Uint32Array(this.perGT)));
        }
        at = alignUp(at, this.grainBytes);
        blob.push(new Uint8Array(at - (start + blob.reduce((n, b) => n + b.length, 0))));
        const all = Buffer.concat(blob);
        all.set(u32Bytes(gd), gdPos - start);
        if (rgd) all.set(u32Bytes(rgd), rgdPos - start);
        await this.storage.write(all, start);
        this.fileSize = at;
        this.gd = gd;
        this.rgd = rgd;
        gdAt = gdPos / SECTOR;
        rgdAt = rgd ? rgdPos / SECTOR : 0;
      } else if (newGTs < this.numGTs) {
        this.gd = this.gd.slice(0, newGTs);
        this.rgd = this.rgd?.slice(0, newGTs);
        for (const k of [...this.gts.keys()]) if (k >= newGTs) this.gts.delete(k);
      }
      this.header = { ...h, capacitySectors: newSectors, gdOffsetSectors: gdAt, rgdOffsetSectors: rgdAt };
      this.size = newSectors * SECTOR;
      await this.storage.write(serializeHeader(this.header), 0);
    });
  }

  /** Every GTE back to 0 (after commit): the extent reads as one big hole; the old grains leak. */
  async makeEmpty(): Promise<void> {
    if (this.compressed) throw unsupported(`${this.file}: a streamOptimized image cannot be emptied`);
    this.changed = true;
    await this.lock.run(async () => {
      for (let i = 0; i < this.numGTs; i++) {
        const t = await this.gt(i);
        if (!t?.some((e) => e !== 0)) continue;
        t.fill(0);
        await this.writeGTEs(i, 0, this.perGT);
      }
    });
  }

  // ---- check ----

  /**
   * With `repair` (a writable, not stream-optimized extent): a GTE past the end
   * of the file, past the capacity or inside the metadata becomes 0 (that grain
   * reads from the parent, or zeros), and a redundant GT that disagrees is
   * rewritten from the GT (the one readers use). Overlaps are only reported.
   */
  /** Sectors a stored grain takes (compressed: from its marker). */
  private async grainSectorsAt(e: number): Promise<number> {
    if (!(this.compressed && this.header.flags & FLAG_MARKERS)) return this.header.grainSectors;
    if ((e + 1) * SECTOR > this.fileSize) return 1;
    const head = new Uint8Array(GRAIN_MARKER);
    await this.storage.read(head, e * SECTOR);
    return alignUp(GRAIN_MARKER + viewOf(head).getUint32(8, true), SECTOR) / SECTOR;
  }

  /** What is wrong with GTE `e` of grain `gi` (GT i, entry j), if anything. */
  private async gteProblem(e: number, gi: number, i: number, j: number): Promise<string | undefined> {
    if (e === 0 || e === GTE_ZEROED) return undefined;
    const h = this.header;
    if (gi >= Math.ceil(h.capacitySectors / h.grainSectors)) {
      return `grain table ${i} entry ${j} (sector ${e}) lies past the capacity`;
    }
    if ((e + (await this.grainSectorsAt(e))) * SECTOR > this.fileSize) {
      return `grain ${gi} at sector ${e} is past end of file (size ${this.fileSize})`;
    }
    if (!this.compressed && e < h.overHeadSectors) {
      return `grain ${gi} at sector ${e} lies in the metadata area (overHead ${h.overHeadSectors})`;
    }
    return undefined;
  }

  async check(repair = false): Promise<SparseCheck> {
    const canFix = repair && this.write !== undefined && !this.compressed;
    const messages: string[] = [];
    let repaired = 0;
    const grains: Array<[number, number, string]> = [];
    for (let i = 0; i < this.numGTs; i++) {
      let t: Uint32Array | undefined;
      try {
        t = await this.gt(i);
      } catch (e) {
        if (!(e instanceof PlatterError)) throw e;
        messages.push(`${this.file}: ${e.message.replace(/^.*corrupt image: /, '')}`);
        continue;
      }
      if (!t) continue;
      let rt: Uint32Array | undefined;
      if (this.rgd && this.rgd[i] !== 0 && this.appendAt === undefined) {
        if (this.rgd[i] * SECTOR + this.gtBytes > this.fileSize) {
          messages.push(
            `${this.file}: redundant grain directory entry ${i} (sector ${this.rgd[i]}) is past end of file`,
          );
        } else rt = await readU32s(this.storage, this.rgd[i] * SECTOR, this.perGT);
      }
      let rewrite = false;
      for (let j = 0; j < this.perGT; j++) {
        let e = t[j];
        if (e === 0 && (!rt || rt[j] === 0)) continue; // the common case, without an await
        const gi = i * this.perGT + j;
        let problem = await this.gteProblem(e, gi, i, j);
        if (rt && rt[j] !== e) {
          // The copies disagree: keep the one that makes sense (the GT when both do).
          const other = await this.gteProblem(rt[j], gi, i, j);
          if (canFix) {
            if (problem && !other) {
              t[j] = rt[j];
              e = rt[j];
              problem = undefined;
            }
            rewrite = true;
            repaired++;
          } else {
            messages.push(
              `${this.file}: grain table ${i} entry ${j} is ${e} but ${rt[j]} in the redundant grain table`,
            );
          }
        }
        if (e === 0 || e === GTE_ZEROED) continue;
        if (problem && canFix) {
          t[j] = 0;
          rewrite = true;
          repaired++;
          continue;
        }
        if (problem) {
          messages.push(`${this.file}: ${problem}`);
          continue;
        }
        grains.push([e, e + (await this.grainSectorsAt(e)), `grain ${gi}`]);
      }
      if (rewrite) {
        this.changed = true;
        await this.lock.run(() => this.writeGTEs(i, 0, this.perGT));
      }
    }
    grains.sort((a, b) => a[0] - b[0]);
    for (let k = 1; k < grains.length; k++) {
      if (grains[k][0] < grains[k - 1][1]) {
        messages.push(
          `${this.file}: ${grains[k - 1][2]} (sector ${grains[k - 1][0]}) and ${grains[k][2]} (sector ${grains[k][0]}) overlap`,
        );
      }
    }
    return { corruptions: messages.length, messages, allocatedGrains: grains.length, repaired };
  }

  async flush(): Promise<void> {
    if (!this.changed) return;
    this.changed = false;
    await this.storage.flush();
  }

  /**
   * Close does not fsync, like the other drivers and qemu-img's default for
   * convert (an fsync here cost 2-4 s after a 2 GiB convert): callers that
   * need durability flush first (every op does). Writes keep their order
   * (data before the GTEs that point to it, the stream's footer before its
   * header), so a killed process, whose writes the page cache keeps, leaves a
   * consistent image; only a power loss before write-back can lose them.
   */
  async close(): Promise<void> {
    try {
      if (this.dirty) {
        this.changed = true;
        await this.lock.run(() => this.finishStream());
      }
    } finally {
      if (!this.shared) await this.storage.close();
    }
  }
}

/** One buffer for adjacent pieces: a view when they already lie back to back in memory, else a copy. */
function joined(parts: Uint8Array[]): Uint8Array {
  if (parts.length === 1) return parts[0];
  const first = parts[0];
  let end = first.byteOffset + first.length;
  for (const p of parts.slice(1)) {
    if (p.buffer !== first.buffer || p.byteOffset !== end) return Buffer.concat(parts);
    end += p.length;
  }
  return new Uint8Array(first.buffer, first.byteOffset, end - first.byteOffset);
}

/** GTEs are 32-bit sector numbers: a sparse extent file cannot grow past 2 TiB. */
function tooBig(file: string): PlatterError {
  return new PlatterError(
    'ENOSPC',
    `${file}: a sparse extent file cannot grow past 2 TiB (32-bit grain sector numbers)`,
  );
}

/** Do the last 1536 bytes hold footer marker, footer and end-of-stream marker? */
async function hasFooter(storage: Storage, fileSize: number): Promise<boolean> {
  if (fileSize < 4 * SECTOR) return false;
  const tail = new Uint8Array(3 * SECTOR);
  await storage.read(tail, fileSize - tail.length);
  const v = viewOf(tail);
  return (
    v.getUint32(12, true) === MARKER_FOOTER &&
    v.getUint32(8, true) === 0 &&
    v.getUint32(SECTOR, true) === MAGIC &&
    v.getBigUint64(2 * SECTOR, true) === 0n &&
    v.getUint32(2 * SECTOR + 8, true) === 0 &&
    v.getUint32(2 * SECTOR + 12, true) === MARKER_EOS
  );
}

function push(out: Extent[], offset: number, length: number, status: Extent['status']): void {
  const last = out[out.length - 1];
  if (last && last.status === status && last.offset + last.length === offset) last.length += length;
  else out.push({ offset, length, status, depth: 0 });
}

/** Layout of a new in-place sparse extent, as qemu-img writes it. */
export interface SparseLayout {
  header: SparseHeader;
  rgd: Uint32Array;
  gd: Uint32Array;
}

export function sparseLayout(opts: {
  capacitySectors: number;
  grainSectors: number;
  descriptorSectors: number;
  zeroGrain: boolean;
}): SparseLayout {
  const perGT = 512;
  const gtSectors = (perGT * 4) / SECTOR;
  const numGTs = Math.ceil(opts.capacitySectors / (opts.grainSectors * perGT));
  const gdSectors = alignUp(numGTs * 4, SECTOR) / SECTOR;
  const descOffset = opts.descriptorSectors > 0 ? 1 : 0;
  const rgdOffset = descOffset + opts.descriptorSectors || 1;
  const gdOffset = rgdOffset + gdSectors + numGTs * gtSectors;
  const overHead = alignUp(gdOffset + gdSectors + numGTs * gtSectors, opts.grainSectors);
  const rgd = new Uint32Array(numGTs);
  const gd = new Uint32Array(numGTs);
  for (let i = 0; i < numGTs; i++) {
    rgd[i] = rgdOffset + gdSectors + i * gtSectors;
    gd[i] = gdOffset + gdSectors + i * gtSectors;
  }
  return {
    header: {
      version: opts.zeroGrain ? 2 : 1,
      flags: FLAG_RGD | 1 | (opts.zeroGrain ? FLAG_ZERO_GRAIN : 0),
      capacitySectors: opts.capacitySectors,
      grainSectors: opts.grainSectors,
      descriptorOffsetSectors: descOffset,
      descriptorSizeSectors: opts.descriptorSectors,
      numGTEsPerGT: perGT,
      rgdOffsetSectors: rgdOffset,
      gdOffsetSectors: gdOffset,
      overHeadSectors: overHead,
      uncleanShutdown: 0,
      compressAlgorithm: 0,
    },
    rgd,
    gd,
  };
}

/** Writes the header and directories of a new in-place sparse extent (GTs are zero: the file is extended). */
export async function writeSparseLayout(storage: Storage, layout: SparseLayout): Promise<void> {
  const h = layout.header;
  await storage.truncate(h.overHeadSectors * SECTOR);
  await storage.write(serializeHeader(h), 0);
  await storage.write(u32Bytes(layout.rgd), h.rgdOffsetSectors * SECTOR);
  await storage.write(u32Bytes(layout.gd), h.gdOffsetSectors * SECTOR);
}

export { u32Bytes };
