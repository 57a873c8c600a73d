/**
 * An open qcow2 image: the L1/L2 mapping, reads, extents and writes.
 *
 * Writes follow the crash-safe order of qcow2.txt's model: a new cluster's
 * refcount is set, then its data is written, then the L2 entry, then (for a
 * new L2 table) the L1 entry; an old cluster's reference is removed before its
 * refcount is dropped, so a killed process leaves at most leaked clusters.
 *
 * Write-back (as qemu's metadata caches): when plain data lands in new
 * clusters, the refcount increments and the L2 entries stay in the cached
 * tables, marked dirty, and go out together later (flushMeta: refcounts
 * first, then L2 entries), instead of two small writes per request. They go
 * out before anything that depends on them is written (an L1 entry, an
 * immediate L2 write, a refcount decrement, the header at close), at flush
 * and close, when too much is held back, and before any other operation takes
 * the lock (check, snapshots, surgery see the image as it is on disk). A kill
 * before that leaves only leaked clusters: data and refcounts are written
 * before the entries that reference them.
 *
 * Clusters shared with an internal snapshot (refcount > 1) and compressed
 * clusters are copied on write; L2 tables shared with a snapshot likewise.
 * All metadata changes run under one mutex; reads run concurrently.
 */
import { isAllZero } from '../../core/bytes.js';
import { type Extent, type HostSpan, type HostSpanPurpose, pushExtent } from '../../core/disk.js';
import { corrupt, PlatterError } from '../../core/errors.js';
import { Mutex } from '../../core/mutex.js';
import type { Storage } from '../../core/storage.js';
import {
  type CompressedRef,
  compressClusters,
  decodeCompressed,
  decompressCluster,
  encodeCompressed,
} from './compressed.js';
import {
  COMPAT_LAZY_REFCOUNTS,
  EXT_BITMAPS,
  type Header,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  INCOMPAT_EXTL2,
  serializeHeader,
} from './header.js';
import { type RefcountHost, Refcounts } from './refcounts.js';
import {
  COMPRESSED_HI,
  COPIED_HI,
  decodeL2,
  type L2Entry,
  l2OffsetOf,
  offsetOf,
  readHiLo,
  standardEntry,
  writeHiLo,
  writeStandardRun,
} from './tables.js';

/** Where a batch of compressed clusters goes (image.ts layout()). */
interface Layout {
  start: number;
  positions: number[];
  counts: Map<number, number>;
  lastC: number;
}

/** Are the 8 bytes of the entry at byte `at` all zero? */
function isZeroEntry(t: Uint8Array, at: number): boolean {
  return (t[at] | t[at + 1] | t[at + 2] | t[at + 3] | t[at + 4] | t[at + 5] | t[at + 6] | t[at + 7]) === 0;
}

/** A run of guest bytes with one kind of mapping. */
export interface Segment {
  offset: number;
  length: number;
  kind: 'data' | 'zero' | 'hole' | 'compressed';
  /** data: host offset of `offset`. */
  host: number;
  comp?: CompressedRef;
  /** compressed: the guest cluster's start. */
  clusterStart?: number;
}

const L2_CACHE_BYTES = 32 << 20;
/** Write-back limits: L2 tables with unwritten entries, and clusters mapped by them. */
const MAX_DIRTY_TABLES = 8;
const MAX_DIRTY_CLUSTERS = 16384;

export class Qcow2Image implements RefcountHost {
  readonly cs: number;
  readonly clusterBits: number;
  readonly l2Entries: number;
  /** Extended L2 entries: 128 bits each, 32 subclusters per cluster (read-only support). */
  readonly extL2: boolean;
  readonly refcountOrder: number;
  fileSize: number;
  l1: Uint8Array;
  refcounts: Refcounts;
  private readonly mutex = new Mutex();
  /**
   * The metadata lock for operations outside the write path (check,
   * snapshots, surgery): held-back metadata is written first.
   */
  readonly lock: Pick<Mutex, 'run'> = {
    run: <T>(fn: () => Promise<T>): Promise<T> =>
      this.mutex.run(async () => {
        await this.flushMeta();
        return fn();
      }),
  };
  private readonly l2cache = new Map<number, Uint8Array>();
  /** L2 tables with entries not yet written: table offset -> [table, first entry, end entry). */
  private readonly dirtyL2 = new Map<number, [Uint8Array, number, number]>();
  private dirtyClusters = 0;
  private lastComp?: { key: string; data: Uint8Array };
  /** The host cluster compressed data is being packed into, and its next free byte. */
  private compTail?: { cluster: number; used: number };
  private dirtyMarked = false;
  /** Has this open changed the image yet? (the first change drops bitmaps) */
  private changed = false;

  /** The image file; every write through it marks the image as needing a flush. */
  readonly storage: Storage;
  /** The same file without that wrapper: what hostSpans names (for reads, nothing to mark). */
  private readonly bareStorage: Storage;
  private unflushed = false;

  constructor(
    storage: Storage,
    readonly file: string,
    public h: Header,
    fileSize: number,
    l1: Uint8Array,
    reftable: Uint8Array,
    readonly readOnly: boolean,
    readonly compress: boolean,
  ) {
    this.bareStorage = storage;
    this.storage = new Proxy(storage, {
      get: (target, prop, receiver) => {
        if (prop === 'write') {
          return (buf: Uint8Array, offset: number) => {
            this.unflushed = true;
            return target.write(buf, offset);
          };
        }
        const v = Reflect.get(target, prop, receiver);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
    this.clusterBits = h.clusterBits;
    this.cs = 2 ** h.clusterBits;
    this.extL2 = (h.incompatible & INCOMPAT_EXTL2) !== 0n;
    this.l2Entries = this.cs / (this.extL2 ? 16 : 8);
    this.refcountOrder = h.refcountOrder;
    this.fileSize = fileSize;
    this.l1 = l1;
    this.refcounts = new Refcounts(this, reftable, h.refcountTableOffset);
  }

  get clusterSize(): number {
    return this.cs;
  }

  get size(): number {
    return this.h.size;
  }

  get v3(): boolean {
    return this.h.version === 3;
  }

  async tableMoved(offset: number, clusters: number): Promise<void> {
    this.h.refcountTableOffset = offset;
    this.h.refcountTableClusters = clusters;
    await this.writeHeader();
  }

  async writeHeader(): Promise<void> {
    await this.storage.write(serializeHeader(this.h, this.file), 0);
  }

  // ---- L1 / L2 access -------------------------------------------------------

  l2Offset(l1i: number): number {
    if (l1i >= this.h.l1Size) return 0;
    const [hi, lo] = readHiLo(this.l1, l1i);
    return l2OffsetOf(hi, lo, this.cs, this.fileSize, this.file, l1i);
  }

  async loadL2(offset: number): Promise<Uint8Array> {
    let t = this.l2cache.get(offset);
    if (t) return t;
    t = new Uint8Array(this.cs);
    await this.storage.read(t, offset);
    const held = this.l2cache.get(offset);
    if (held) return held; // loaded meanwhile (and maybe changed since): keep that one
    this.cacheL2(offset, t);
    return t;
  }

  /** Puts a table in the L2 cache, evicting the oldest one without unwritten entries when full. */
  private cacheL2(offset: number, table: Uint8Array): void {
    if (!this.l2cache.has(offset) && this.l2cache.size * this.cs >= L2_CACHE_BYTES) {
      for (const k of this.l2cache.keys()) {
        if (!this.dirtyL2.has(k)) {
          this.l2cache.delete(k);
          break;
        }
      }
    }
    this.l2cache.set(offset, table);
  }

  dropCaches(): void {
    if (this.dirtyL2.size > 0 || this.refcounts.dirtyBlocks > 0)
      throw new Error('internal error: qcow2 caches dropped with unwritten metadata');
    this.l2cache.clear();
    this.lastComp = undefined;
    this.compTail = undefined;
    this.refcounts.dropCache();
  }

  /** Index of L2 entry i in 64-bit words (extended entries take two). */
  l2Index(i: number): number {
    return this.extL2 ? 2 * i : i;
  }

  /** Does bit 0 of a standard descriptor mean "zero"? (v3, not with extended L2) */
  get zeroFlag(): boolean {
    return this.v3 && !this.extL2;
  }

  entry(table: Uint8Array, i: number): L2Entry {
    const [hi, lo] = readHiLo(table, this.l2Index(i));
    return decodeL2(hi, lo, this.zeroFlag, this.cs, this.file);
  }

  /**
   * Extended L2: the subclusters of guest cluster c in [pos, pos+n), from the
   * bitmap (bits 0-31 allocated, 32-63 reads as zeros; neither: hole).
   */
  private mapSubclusters(
    out: Segment[],
    table: Uint8Array,
    e: L2Entry,
    c: number,
    pos: number,
    n: number,
  ): void {
    const cs = this.cs;
    const sc = cs / 32;
    const [zeroBits, allocBits] = readHiLo(table, this.l2Index(c % this.l2Entries) + 1);
    const base = c * cs;
    for (let p = pos; p < pos + n; ) {
      const s = Math.floor((p - base) / sc);
      const q = Math.min(pos + n, base + (s + 1) * sc);
      if ((allocBits >>> s) & 1) {
        if (e.offset === 0) {
          throw corrupt(
            this.file,
            `subcluster ${s} of guest cluster ${c} is allocated but its cluster has no host offset`,
          );
        }
        if (e.offset + (q - base) > this.fileSize) {
          throw corrupt(
            this.file,
            `data cluster offset 0x${e.offset.toString(16)} is past end of file (size ${this.fileSize})`,
          );
        }
        this.pushSeg(out, { offset: p, length: q - p, kind: 'data', host: e.offset + (p - base) });
      } else {
        this.pushSeg(out, {
          offset: p,
          length: q - p,
          kind: (zeroBits >>> s) & 1 ? 'zero' : 'hole',
          host: 0,
        });
      }
      p = q;
    }
  }

  /** The mapping of guest bytes [offset, offset+length), in order, adjacent runs merged. */
  async map(offset: number, length: number, maxTables = Number.POSITIVE_INFINITY): Promise<Segment[]> {
    const out: Segment[] = [];
    let tables = 0;
    const end = Math.min(offset + length, this.h.size);
    const cs = this.cs;
    let pos = offset;
    while (pos < end) {
      const gc = Math.floor(pos / cs);
      const l1i = Math.floor(gc / this.l2Entries);
      const tableEnd = Math.min(end, (l1i + 1) * this.l2Entries * cs);
      const l2off = this.l2Offset(l1i);
      if (l2off === 0) {
        this.pushSeg(out, { offset: pos, length: tableEnd - pos, kind: 'hole', host: 0 });
        pos = tableEnd;
        continue;
      }
      if (tables++ >= maxTables) break;
      const table = await this.loadL2(l2off);
      if (!this.extL2) {
        pos = this.mapStandard(out, table, pos, tableEnd);
        continue;
      }
      while (pos < tableEnd) {
        const c = Math.floor(pos / cs);
        const within = pos - c * cs;
        const n = Math.min(cs - within, tableEnd - pos);
        const e = this.entry(table, c % this.l2Entries);
        if (this.extL2 && e.kind !== 'compressed') {
          this.mapSubclusters(out, table, e, c, pos, n);
        } else if (e.kind === 'compressed') {
          const comp = decodeCompressed(e.hi, e.lo, this.clusterBits, this.file);
          if (comp.offset + 1 > this.fileSize) {
            throw corrupt(
              this.file,
              `compressed cluster offset 0x${comp.offset.toString(16)} is past end of file (size ${this.fileSize})`,
            );
          }
          out.push({ offset: pos, length: n, kind: 'compressed', host: 0, comp, clusterStart: c * cs });
        } else if (e.kind === 'data') {
          if (e.offset + cs > this.fileSize && e.offset + within + n > this.fileSize) {
            throw corrupt(
              this.file,
              `data cluster offset 0x${e.offset.toString(16)} is past end of file (size ${this.fileSize})`,
            );
          }
          this.pushSeg(out, { offset: pos, length: n, kind: 'data', host: e.offset + within });
        } else {
          this.pushSeg(out, { offset: pos, length: n, kind: e.kind, host: 0 });
        }
        pos += n;
      }
    }
    return out;
  }

  /**
   * map() over standard (64-bit) L2 entries of one table, [pos, tableEnd):
   * the hot loop of every read and extents call, so entries are decoded in
   * place, without an object per cluster. Returns tableEnd.
   */
  private mapStandard(out: Segment[], table: Uint8Array, pos: number, tableEnd: number): number {
    const cs = this.cs;
    const perTable = this.l2Entries;
    const zeroFlag = this.zeroFlag;
    const fileSize = this.fileSize;
    const lastCluster = Math.ceil(tableEnd / cs);
    let last: Segment | undefined = out[out.length - 1];
    while (pos < tableEnd) {
      const c = Math.floor(pos / cs);
      const within = pos - c * cs;
      let n = Math.min(cs - within, tableEnd - pos);
      const i = c % perTable;
      const at = i * 8;
      const hi = ((table[at] << 24) | (table[at + 1] << 16) | (table[at + 2] << 8) | table[at + 3]) >>> 0;
      const lo = ((table[at + 4] << 24) | (table[at + 5] << 16) | (table[at + 6] << 8) | table[at + 7]) >>> 0;
      if (hi === 0 && lo === 0) {
        // A hole: the entries after it that are all zero bytes too join it, 64 at a time (memcmp).
        let j = c + 1;
        while (j < lastCluster) {
          const k = Math.min(lastCluster, j + 64);
          const from = (j % perTable) * 8;
          if (isAllZero(table.subarray(from, from + (k - j) * 8))) {
            j = k;
            continue;
          }
          while (j < k && isZeroEntry(table, (j % perTable) * 8)) j++;
          break;
        }
        n = Math.min(tableEnd, j * cs) - pos;
      }
      let kind: Segment['kind'];
      let host = 0;
      if (hi & COMPRESSED_HI) {
        const comp = decodeCompressed(hi, lo, this.clusterBits, this.file);
        if (comp.offset + 1 > fileSize) {
          throw corrupt(
            this.file,
            `compressed cluster offset 0x${comp.offset.toString(16)} is past end of file (size ${fileSize})`,
          );
        }
        last = { offset: pos, length: n, kind: 'compressed', host: 0, comp, clusterStart: c * cs };
        out.push(last);
        pos += n;
        continue;
      }
      const off = (hi & 0x00ffffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0);
      if (zeroFlag && lo & 1) kind = 'zero';
      else if (off === 0) kind = 'hole';
      else {
        if (off % cs !== 0) this.entry(table, i); // throws the misalignment error
        if (off + cs > fileSize && off + within + n > fileSize) {
          throw corrupt(
            this.file,
            `data cluster offset 0x${off.toString(16)} is past end of file (size ${fileSize})`,
          );
        }
        kind = 'data';
        host = off + within;
      }
      if (
        last !== undefined &&
        last.kind === kind &&
        last.offset + last.length === pos &&
        (kind !== 'data' || last.host + last.length === host)
      ) {
        last.length += n;
      } else {
        last = { offset: pos, length: n, kind, host };
        out.push(last);
      }
      pos += n;
    }
    return pos;
  }

  private pushSeg(out: Segment[], s: Segment): void {
    const last = out[out.length - 1];
    if (
      last &&
      last.kind === s.kind &&
      last.kind !== 'compressed' &&
      last.offset + last.length === s.offset &&
      (s.kind !== 'data' || last.host + last.length === s.host)
    ) {
      last.length += s.length;
    } else out.push(s);
  }

  // ---- reading --------------------------------------------------------------

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const segs = await this.map(offset, buf.length);
    await Promise.all(
      segs.map(async (s) => {
        const sub = buf.subarray(s.offset - offset, s.offset - offset + s.length);
        switch (s.kind) {
          case 'data':
            return this.readHost(sub, s.host);
          case 'zero':
          case 'hole':
            sub.fill(0);
            return;
          case 'compressed': {
            const data = await this.readCompressed(s.comp!);
            const at = s.offset - s.clusterStart!;
            sub.set(data.subarray(at, at + s.length));
            return;
          }
          default: {
            const never: never = s.kind;
            throw new Error(`internal error: ${never}`);
          }
        }
      }),
    );
  }

  /**
   * Reads: where uncompressed data clusters keep [offset, offset+length) in
   * the file; null where any of it is compressed, zero, a hole or past the end
   * of the file. Allocate: see allocateSpans. Writes: never (they may need
   * allocation or copy-on-write).
   */
  async hostSpans(offset: number, length: number, purpose: HostSpanPurpose): Promise<HostSpan[] | null> {
    if (purpose === 'allocate') return this.allocateSpans(offset, length);
    if (purpose !== 'read') return null;
    const spans: HostSpan[] = [];
    for (const s of await this.map(offset, length)) {
      if (s.kind !== 'data' || s.host + s.length > this.fileSize) return null;
      spans.push({ offset: s.offset, length: s.length, storage: this.bareStorage, at: s.host });
    }
    return spans;
  }

  /** Reads host bytes; a mapping past the end of the file is a corrupt image. */
  private async readHost(buf: Uint8Array, host: number): Promise<void> {
    if (host + buf.length > this.fileSize) {
      // qemu preallocation=metadata may leave the file shorter than its last cluster: zeros.
      const avail = Math.max(0, this.fileSize - host);
      if (avail > 0) await this.storage.read(buf.subarray(0, avail), host);
      buf.fill(0, avail);
      return;
    }
    await this.storage.read(buf, host);
  }

  async readCompressed(comp: CompressedRef): Promise<Uint8Array> {
    const key = `${comp.offset}:${comp.length}`;
    if (this.lastComp?.key === key) return this.lastComp.data;
    const len = Math.min(comp.length, this.fileSize - comp.offset, this.cs * 2);
    const raw = new Uint8Array(Math.max(0, len));
    await this.storage.read(raw, comp.offset);
    const data = await decompressCluster(raw, this.cs, this.h.compressionType, this.file, comp.offset);
    this.lastComp = { key, data };
    return data;
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    // Bound the walk: at most 64 L2 tables per call (the core asks again).
    const out: Extent[] = [];
    for (const s of await this.map(offset, length, 64)) {
      const status = s.kind === 'compressed' ? 'data' : s.kind;
      pushExtent(out, { offset: s.offset, length: s.length, status, depth: 0 });
    }
    return out;
  }

  // ---- writing --------------------------------------------------------------

  checkWritable(): void {
    if (this.h.incompatible & INCOMPAT_CORRUPT) {
      throw new PlatterError(
        'ECORRUPT',
        `${this.file}: image is marked corrupt; repair it with 'platter check -r all' first`,
      );
    }
  }

  /** Lazy refcounts: mark the image dirty before the first metadata change. */
  async beginChange(): Promise<void> {
    if (!this.changed) {
      this.changed = true;
      await this.dropBitmaps();
    }
    if (this.dirtyMarked || !(this.h.compatible & COMPAT_LAZY_REFCOUNTS)) return;
    this.h.incompatible |= INCOMPAT_DIRTY;
    await this.writeHeader();
    await this.storage.flush();
    this.dirtyMarked = true;
  }

  /**
   * Where the persistent dirty bitmaps live (bitmaps extension: directory,
   * bitmap tables, data clusters), with sizes checked against the file.
   */
  async bitmapRanges(): Promise<{ ranges: Array<[number, number, string]>; error?: string }> {
    const ranges: Array<[number, number, string]> = [];
    const ext = this.h.otherExtensions.find((e) => e.type === EXT_BITMAPS);
    if (!ext || ext.data.length < 24) return { ranges };
    const v = new DataView(ext.data.buffer, ext.data.byteOffset, ext.data.byteLength);
    const count = v.getUint32(0);
    const dirSize = Number(v.getBigUint64(8));
    const dirOffset = Number(v.getBigUint64(16));
    if (dirSize > 64 << 20 || dirOffset + dirSize > this.fileSize || count > 65535) {
      return { ranges, error: `bitmap directory at 0x${dirOffset.toString(16)}+${dirSize} is invalid` };
    }
    ranges.push([dirOffset, dirSize, 'bitmap directory']);
    const dir = new Uint8Array(dirSize);
    await this.storage.read(dir, dirOffset);
    const dv = new DataView(dir.buffer);
    for (let at = 0, i = 0; i < count && at + 24 <= dirSize; i++) {
      const tOff = Number(dv.getBigUint64(at));
      const tSize = dv.getUint32(at + 8);
      const nameSize = dv.getUint16(at + 18);
      const extra = dv.getUint32(at + 20);
      if (tSize * 8 > 64 << 20 || tOff + tSize * 8 > this.fileSize) {
        return { ranges, error: `bitmap table ${i} at 0x${tOff.toString(16)} is past end of file` };
      }
      ranges.push([tOff, tSize * 8, 'bitmap table']);
      const t = new Uint8Array(tSize * 8);
      await this.storage.read(t, tOff);
      for (let k = 0; k < tSize; k++) {
        const [hi, lo] = readHiLo(t, k);
        const off = offsetOf(hi, lo);
        if (off !== 0) ranges.push([off, this.cs, 'bitmap data']);
      }
      at += Math.ceil((24 + extra + nameSize) / 8) * 8;
    }
    return { ranges };
  }

  /**
   * platter does not keep dirty bitmaps up to date, so before its first
   * change it removes them cleanly (extension dropped and autoclear bits
   * cleared first, their clusters freed after), rather than leaving stale
   * bitmaps whose clusters qemu would then report as leaked.
   */
  private async dropBitmaps(): Promise<void> {
    if (this.h.autoclear === 0n && !this.h.otherExtensions.some((e) => e.type === EXT_BITMAPS)) return;
    const { ranges, error } = await this.bitmapRanges();
    this.h.otherExtensions = this.h.otherExtensions.filter((e) => e.type !== EXT_BITMAPS);
    this.h.autoclear = 0n;
    await this.writeHeader();
    await this.storage.flush();
    if (!error) for (const [offset, length] of ranges) await this.refcounts.addBytes(offset, length, -1);
  }

  /** Clears the dirty bit once everything is on disk. */
  async endChanges(): Promise<void> {
    if (!this.dirtyMarked) return;
    await this.storage.flush();
    this.h.incompatible &= ~INCOMPAT_DIRTY;
    await this.writeHeader();
    this.dirtyMarked = false;
  }

  /** Writes the held-back metadata: refcount increments first, then the L2 entries that need them. */
  async flushMeta(): Promise<void> {
    await this.refcounts.flushDirty();
    for (const [l2off, [table, from, to]] of this.dirtyL2) {
      this.guard(l2off, this.cs, 'L2 table');
      await this.storage.write(table.subarray(from * 8, to * 8), l2off + from * 8);
      this.dirtyL2.delete(l2off);
    }
    this.dirtyClusters = 0;
  }

  async writeL1Entry(l1i: number, hi: number, lo: number): Promise<void> {
    await this.flushMeta();
    writeHiLo(this.l1, l1i, hi, lo);
    await this.storage.write(this.l1.subarray(l1i * 8, l1i * 8 + 8), this.h.l1Offset + l1i * 8);
  }

  /** Writes L2 entries [from, to) of a table now, or (`hold`) leaves them for flushMeta. */
  private async writeL2Entries(
    l2off: number,
    table: Uint8Array,
    from: number,
    to: number,
    hold = false,
  ): Promise<void> {
    this.guard(l2off, this.cs, 'L2 table');
    // Held entries live in the cached table; one that left the cache meanwhile is written now.
    if (hold && this.l2cache.get(l2off) === table) {
      const d = this.dirtyL2.get(l2off);
      this.dirtyL2.set(l2off, d ? [table, Math.min(d[1], from), Math.max(d[2], to)] : [table, from, to]);
      this.dirtyClusters += to - from;
      if (this.dirtyL2.size > MAX_DIRTY_TABLES || this.dirtyClusters > MAX_DIRTY_CLUSTERS) {
        await this.flushMeta();
      }
      return;
    }
    // The table may hold entries whose refcounts are not written yet.
    await this.flushMeta();
    // A table that left the cache meanwhile comes back: the writer's copy is the current one.
    if (this.l2cache.get(l2off) !== table) this.cacheL2(l2off, table);
    await this.storage.write(table.subarray(from * 8, to * 8), l2off + from * 8);
  }

  /**
   * Overlap check (as qemu's): a data or table write must not land on the
   * header, the active L1 table or the refcount table. Only a damaged image
   * maps clusters there; refusing keeps it from getting worse.
   */
  guard(offset: number, length: number, what: string): void {
    const hit = (a: number, n: number): boolean => n > 0 && offset < a + n && a < offset + length;
    let region: string | undefined;
    if (hit(0, this.cs)) region = 'the header';
    else if (this.h.l1Offset !== 0 && hit(this.h.l1Offset, this.h.l1Size * 8)) region = 'the L1 table';
    else if (hit(this.refcounts.tableOffset, this.refcounts.table.length)) region = 'the refcount table';
    if (region) {
      throw corrupt(
        this.file,
        `${what} at 0x${offset.toString(16)} overlaps ${region}; not writing (run 'platter check')`,
      );
    }
  }

  /** Host write that keeps fileSize current. */
  async writeHost(buf: Uint8Array, host: number, what = 'data'): Promise<void> {
    this.guard(host, buf.length, what);
    await this.storage.write(buf, host);
    if (host + buf.length > this.fileSize) this.fileSize = host + buf.length;
  }

  /** Allocates `n` contiguous host clusters (refcount 1); returns the host offset. */
  async allocClusters(n: number): Promise<number> {
    return this.refcounts.alloc(n);
  }

  /** allocClusters for new data clusters, their refcounts held back (written before the L2 entries). */
  private async allocHeldBack(n: number): Promise<number> {
    this.refcounts.writeBack = true;
    try {
      return await this.allocClusters(n);
    } finally {
      this.refcounts.writeBack = false;
    }
  }

  /** The L2 table for l1i, owned by the active image alone (allocated or copied as needed). */
  async l2ForWrite(l1i: number): Promise<{ offset: number; table: Uint8Array }> {
    const old = this.l2Offset(l1i);
    if (old !== 0) {
      const rc = await this.refcounts.get(old / this.cs);
      if (rc === 1) {
        const [hi, lo] = readHiLo(this.l1, l1i);
        if (!(hi & COPIED_HI)) await this.writeL1Entry(l1i, (hi | COPIED_HI) >>> 0, lo);
        return { offset: old, table: await this.loadL2(old) };
      }
      if (rc === 0) throw corrupt(this.file, `L2 table at 0x${old.toString(16)} has refcount 0`);
    }
    const table = new Uint8Array(this.cs);
    if (old !== 0) {
      table.set(await this.loadL2(old));
      // Shared entries stay shared: their refcounts count L1 tables, not L2 copies.
      for (let i = 0; i < this.l2Entries; i++) {
        const [hi, lo] = readHiLo(table, i);
        if (hi & COPIED_HI) writeHiLo(table, i, (hi & ~COPIED_HI) >>> 0, lo);
      }
    }
    const off = await this.allocClusters(1);
    await this.orGiveBack(off, 1, () => this.writeHost(table, off));
    this.cacheL2(off, table);
    const [hi, lo] = standardEntry(off, true);
    await this.writeL1Entry(l1i, hi, lo);
    if (old !== 0) await this.refcounts.add(old / this.cs, 1, -1);
    return { offset: off, table };
  }

  /**
   * Fills n new clusters at `host` with `fill`; if that fails (a full disk),
   * nothing points at them yet, so they are given back rather than leaked, as
   * qemu does, and the failure goes on.
   */
  private async orGiveBack(host: number, n: number, fill: () => Promise<void>): Promise<void> {
    try {
      await fill();
    } catch (e) {
      await this.refcounts.add(host / this.cs, n, -1).catch(() => undefined);
      throw e;
    }
  }

  /** Drops one reference to what an L2 entry pointed at (after the entry was rewritten). */
  private async release(e: L2Entry): Promise<void> {
    if (e.kind === 'hole' || (e.kind !== 'compressed' && e.offset === 0)) return;
    // The entry that dropped the reference reaches the disk before the refcount drops.
    await this.flushMeta();
    if (e.kind === 'compressed') {
      const c = decodeCompressed(e.hi, e.lo, this.clusterBits, this.file);
      await this.refcounts.addBytes(c.sectorStart, c.sectorEnd - c.sectorStart, -1);
      if (this.compTail && this.refcountsDroppedTail(c)) this.compTail = undefined;
    } else if ((e.kind === 'data' || e.kind === 'zero') && e.offset !== 0) {
      await this.refcounts.add(e.offset / this.cs, 1, -1);
    }
  }

  /**
   * release() for many entries: standard clusters that sit side by side on the
   * host drop their references in one refcount update (one write per block
   * instead of one per cluster).
   */
  private async releaseAll(entries: readonly L2Entry[]): Promise<void> {
    let start = -1;
    let n = 0;
    const drop = async (): Promise<void> => {
      if (n > 0) {
        await this.flushMeta();
        await this.refcounts.add(start, n, -1);
      }
      n = 0;
    };
    for (const e of entries) {
      if ((e.kind === 'data' || e.kind === 'zero') && e.offset !== 0) {
        const ci = e.offset / this.cs;
        if (n > 0 && ci === start + n) {
          n++;
          continue;
        }
        await drop();
        start = ci;
        n = 1;
      } else {
        await drop();
        await this.release(e);
      }
    }
    await drop();
  }

  private refcountsDroppedTail(c: CompressedRef): boolean {
    const tail = this.compTail!.cluster * this.cs;
    return c.sectorStart < tail + this.cs && c.sectorEnd > tail;
  }

  /**
   * Is this a data cluster that can be written in place? Answered without a
   * promise when the entry alone tells (holes, zeros, compressed, bit 63 set):
   * the write path asks once per cluster.
   */
  private writableInPlace(e: L2Entry): boolean | Promise<boolean> {
    if (e.kind !== 'data' || e.offset === 0) return false;
    if (e.copied) return true;
    return this.ownsCluster(e);
  }

  /** Can this entry's cluster be written in place? (standard, refcount exactly 1) */
  private async ownsCluster(e: L2Entry): Promise<boolean> {
    if ((e.kind !== 'data' && e.kind !== 'zero') || e.offset === 0) return false;
    if (e.copied) return true;
    return (await this.refcounts.get(e.offset / this.cs)) === 1;
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    this.checkWritable();
    if (this.compress) return this.writeCompressed(buf, offset);
    await this.mutex.run(() => this.writeLocked(buf, offset));
  }

  private async writeLocked(buf: Uint8Array, offset: number): Promise<void> {
    await this.beginChange();
    const cs = this.cs;
    const end = offset + buf.length;
    let pos = offset;
    while (pos < end) {
      const gc = Math.floor(pos / cs);
      const l1i = Math.floor(gc / this.l2Entries);
      const tableEnd = Math.min(end, (l1i + 1) * this.l2Entries * cs);
      await this.writeInTable(buf.subarray(pos - offset, tableEnd - offset), pos, l1i);
      pos = tableEnd;
    }
  }

  /** Writes bytes that lie within one L2 table's range. */
  private async writeInTable(buf: Uint8Array, offset: number, l1i: number): Promise<void> {
    const cs = this.cs;
    const { offset: l2off, table } = await this.l2ForWrite(l1i);
    const end = offset + buf.length;
    const c0 = Math.floor(offset / cs);
    const c1 = Math.ceil(end / cs);
    // Classify each cluster: written in place, or needing a new cluster.
    let c = c0;
    while (c < c1) {
      const e = this.entry(table, c % this.l2Entries);
      let inPlace = this.writableInPlace(e);
      if (typeof inPlace !== 'boolean') inPlace = await inPlace;
      // Find a run of clusters of the same treatment.
      let n = 1;
      const entries = [e];
      while (c + n < c1) {
        const e2 = this.entry(table, (c + n) % this.l2Entries);
        let ip2 = this.writableInPlace(e2);
        if (typeof ip2 !== 'boolean') ip2 = await ip2;
        if (ip2 !== inPlace) break;
        if (inPlace && e2.offset !== e.offset + n * cs) break;
        entries.push(e2);
        n++;
      }
      const a = Math.max(offset, c * cs);
      const b = Math.min(end, (c + n) * cs);
      if (inPlace) {
        await this.writeHost(buf.subarray(a - offset, b - offset), e.offset + (a - c * cs));
      } else {
        await this.writeNewClusters(buf.subarray(a - offset, b - offset), a, c, entries, l2off, table);
      }
      c += n;
    }
  }

  /** Allocates `entries.length` clusters from guest cluster c, merges old content, writes, maps. */
  private async writeNewClusters(
    data: Uint8Array,
    offset: number,
    c: number,
    entries: L2Entry[],
    l2off: number,
    table: Uint8Array,
  ): Promise<void> {
    const cs = this.cs;
    const n = entries.length;
    const start = c * cs;
    let content = data;
    if (offset !== start || data.length !== n * cs) {
      content = new Uint8Array(n * cs);
      // Old content of the first and last cluster when only partly written.
      const fill = async (k: number): Promise<void> => {
        const e = entries[k];
        const dst = content.subarray(k * cs, (k + 1) * cs);
        if (e.kind === 'data') await this.readHost(dst, e.offset);
        else if (e.kind === 'compressed') {
          dst.set(await this.readCompressed(decodeCompressed(e.hi, e.lo, this.clusterBits, this.file)));
        }
      };
      if (offset > start) await fill(0);
      if (offset + data.length < start + n * cs && (n > 1 || offset === start)) await fill(n - 1);
      content.set(data, offset - start);
    }
    // The last cluster of a disk whose size is not cluster-aligned: keep the file tidy.
    // Refcounts and L2 entries are held back (write-back); the data goes out now, before them.
    const host = await this.allocHeldBack(n);
    await this.orGiveBack(host, n, async () => {
      // A new cluster past the end of the file reads zeros without being written (as in qemu):
      // with nothing old merged in, only the caller's bytes go out.
      const merged = entries.some((e) => e.kind === 'data' || e.kind === 'compressed');
      if (!merged && content !== data && host >= this.fileSize) {
        this.guard(host, n * cs, 'data');
        await this.writeHost(data, host + (offset - start));
        // The file still covers the whole clusters (a read of their zeros must not meet its end).
        if (host + n * cs > this.fileSize) {
          await this.storage.truncate(host + n * cs);
          this.fileSize = host + n * cs;
        }
      } else {
        await this.writeHost(content, host);
      }
    });
    await this.mapNewClusters(l2off, table, c, n, host);
    await this.releaseAll(entries);
  }

  /** Maps guest clusters [c, c+n) of one L2 table to new host clusters from `host` (entries held back). */
  private async mapNewClusters(
    l2off: number,
    table: Uint8Array,
    c: number,
    n: number,
    host: number,
  ): Promise<void> {
    const i0 = c % this.l2Entries;
    writeStandardRun(table, i0, n, host, this.cs);
    await this.writeL2Entries(l2off, table, i0, i0 + n, true);
  }

  /**
   * hostSpans 'allocate': whole unallocated clusters (or the disk's last one)
   * get new host clusters now, mapped as writeNewClusters maps them (refcounts
   * and L2 entries held back), and the caller writes every byte there itself.
   * Null unless every cluster in the range is unallocated (a hole): nothing
   * to merge, nothing to release.
   */
  private async allocateSpans(offset: number, length: number): Promise<HostSpan[] | null> {
    const cs = this.cs;
    const end = offset + length;
    if (this.readOnly || this.compress || this.extL2) return null;
    if (offset % cs !== 0 || (end % cs !== 0 && end !== this.h.size)) return null;
    return this.mutex.run(async () => {
      this.checkWritable();
      const c0 = offset / cs;
      const c1 = Math.ceil(end / cs);
      for (let c = c0; c < c1; ) {
        const l1i = Math.floor(c / this.l2Entries);
        const stop = Math.min(c1, (l1i + 1) * this.l2Entries);
        const l2off = this.l2Offset(l1i);
        if (l2off !== 0) {
          const table = await this.loadL2(l2off);
          const i = c % this.l2Entries;
          if (!isAllZero(table.subarray(i * 8, (i + stop - c) * 8))) return null;
        }
        c = stop;
      }
      await this.beginChange();
      const spans: HostSpan[] = [];
      for (let c = c0; c < c1; ) {
        const l1i = Math.floor(c / this.l2Entries);
        const stop = Math.min(c1, (l1i + 1) * this.l2Entries);
        const { offset: l2off, table } = await this.l2ForWrite(l1i);
        const n = stop - c;
        const host = await this.allocHeldBack(n);
        this.guard(host, n * cs, 'data');
        // The caller's write extends the file to here; later allocations must know.
        this.fileSize = Math.max(this.fileSize, host + n * cs);
        await this.mapNewClusters(l2off, table, c, n, host);
        const from = Math.max(offset, c * cs);
        const to = Math.min(end, stop * cs);
        spans.push({
          offset: from,
          length: to - from,
          storage: this.bareStorage,
          at: host + (from - c * cs),
        });
        c = stop;
      }
      return spans;
    });
  }

  /**
   * convert -c: whole clusters landing in unallocated space are compressed
   * (on worker threads, outside the lock) and packed back to back into host
   * clusters, one L2 table's worth at a time with one refcount update, one
   * data write and one L2 write; the rest is written normally.
   */
  private async writeCompressed(buf: Uint8Array, offset: number): Promise<void> {
    const cs = this.cs;
    const end = offset + buf.length;
    const first = Math.ceil(offset / cs);
    // The disk's last cluster counts as whole when the write reaches the disk's end.
    const lastEnd = end === this.h.size ? Math.ceil(end / cs) : Math.floor(end / cs);
    if (lastEnd <= first) return this.mutex.run(() => this.writeLocked(buf, offset));
    let whole = buf.subarray(first * cs - offset, Math.min(lastEnd * cs, end) - offset);
    if (whole.length < (lastEnd - first) * cs) {
      const padded = new Uint8Array((lastEnd - first) * cs);
      padded.set(whole);
      whole = padded;
    }
    const packed = await compressClusters(whole, cs, this.h.compressionType);
    await this.mutex.run(async () => {
      await this.beginChange();
      if (offset < first * cs) await this.writeLocked(buf.subarray(0, first * cs - offset), offset);
      for (let c = first; c < lastEnd; ) {
        const stop = Math.min(lastEnd, (Math.floor(c / this.l2Entries) + 1) * this.l2Entries);
        const rest = await this.placeCompressed(c, stop, packed.slice(c - first, stop - first));
        for (const k of rest) {
          const a = k * cs;
          const b = Math.min((k + 1) * cs, end);
          await this.writeLocked(buf.subarray(a - offset, b - offset), a);
        }
        c = stop;
      }
      const tail = Math.min(lastEnd * cs, end);
      if (tail < end) await this.writeLocked(buf.subarray(tail - offset), tail);
    });
  }

  /**
   * Where compressed items go from host byte `start`: back to back, except
   * that an item moves to the next cluster boundary when it would raise a
   * host cluster's refcount past refcount_bits' maximum (each compressed
   * cluster adds 1 to every host cluster its sectors touch).
   */
  private layout(
    items: Array<{ z: Uint8Array }>,
    start: number,
    tailCluster: number,
    tailRefcount: number,
  ): Layout {
    const cs = this.cs;
    const max = this.refcounts.maxRefcount;
    const counts = new Map<number, number>();
    const positions: number[] = [];
    const touched = (p: number, len: number): [number, number] => [
      Math.floor((Math.floor(p / 512) * 512) / cs),
      Math.floor((Math.ceil((p + len) / 512) * 512 - 1) / cs),
    ];
    const fits = (p: number, len: number): boolean => {
      const [a, b] = touched(p, len);
      for (let x = a; x <= b; x++) {
        if ((counts.get(x) ?? 0) + 1 + (x === tailCluster ? tailRefcount : 0) > max) return false;
      }
      return true;
    };
    let pos = start;
    for (const it of items) {
      if (!fits(pos, it.z.length)) pos = Math.ceil(pos / cs) * cs;
      if (!fits(pos, it.z.length)) pos += cs;
      const [a, b] = touched(pos, it.z.length);
      for (let x = a; x <= b; x++) counts.set(x, (counts.get(x) ?? 0) + 1);
      positions.push(pos);
      pos += it.z.length;
    }
    return { start, positions, counts, lastC: Math.floor((pos - 1) / cs) };
  }

  /**
   * Stores compressed data for guest clusters [c0, c1) of one L2 table where
   * they are unallocated; returns the clusters it could not store that way.
   */
  private async placeCompressed(
    c0: number,
    c1: number,
    zs: Array<Uint8Array | undefined>,
  ): Promise<number[]> {
    const cs = this.cs;
    const { offset: l2off, table } = await this.l2ForWrite(Math.floor(c0 / this.l2Entries));
    const rest: number[] = [];
    const items: Array<{ c: number; z: Uint8Array }> = [];
    for (let c = c0; c < c1; c++) {
      const z = zs[c - c0];
      const e = this.entry(table, c % this.l2Entries);
      const free = e.kind === 'hole' || (e.kind === 'zero' && e.offset === 0);
      if (z && free) items.push({ c, z });
      else rest.push(c);
    }
    if (items.length === 0) return rest;
    // Continue in the tail cluster when the clusters after it are free, else start afresh.
    const t = this.compTail;
    let plan: Layout | undefined;
    if (t) {
      const rcTail = await this.refcounts.get(t.cluster);
      const p = this.layout(items, t.cluster * cs + t.used, t.cluster, rcTail);
      let free = true;
      for (let x = t.cluster + 1; x <= p.lastC && free; x++) free = (await this.refcounts.get(x)) === 0;
      if (free) plan = p;
    }
    if (!plan) {
      const need = this.layout(items, 0, -1, 0).lastC + 1;
      plan = this.layout(items, (await this.refcounts.findFree(need)) * cs, -1, 0);
    }
    const { start, positions, counts, lastC } = plan;
    const firstC = Math.floor(start / cs);
    const endByte = positions[positions.length - 1] + items[items.length - 1].z.length;
    const data = new Uint8Array(Math.ceil(endByte / 512) * 512 - start);
    items.forEach((it, k) => {
      data.set(it.z, positions[k] - start);
      const [hi, lo] = encodeCompressed(positions[k], it.z.length, this.clusterBits);
      writeHiLo(table, it.c % this.l2Entries, hi, lo);
    });
    await this.refcounts.modify(firstC, lastC - firstC + 1, (old, x) => old + (counts.get(x) ?? 0));
    await this.writeHost(data, start);
    const i0 = items[0].c % this.l2Entries;
    const i1 = (items[items.length - 1].c % this.l2Entries) + 1;
    await this.writeL2Entries(l2off, table, i0, i1);
    const used = endByte - lastC * cs;
    this.compTail = used < cs ? { cluster: lastC, used } : undefined;
    return rest;
  }

  /**
   * Zeroes: v3 sets the zero flag on whole clusters (keeping an owned
   * allocation unless mayUnmap); with mayUnmap and no backing file whole
   * clusters become holes, which read zeros there (v2 too); partial clusters,
   * and v2 otherwise, get zero bytes written.
   */
  async writeZeroes(offset: number, length: number, opts: { mayUnmap: boolean }): Promise<void> {
    this.checkWritable();
    const cs = this.cs;
    const end = offset + length;
    const a = Math.ceil(offset / cs) * cs;
    const b = end === this.h.size ? Math.ceil(end / cs) * cs : Math.floor(end / cs) * cs;
    const holes = opts.mayUnmap && !this.h.backing;
    await this.mutex.run(async () => {
      await this.beginChange();
      if ((!this.v3 && !holes) || a >= b) {
        for (let p = offset; p < end; p += 1 << 20) {
          const n = Math.min(1 << 20, end - p);
          await this.writeLocked(new Uint8Array(n), p);
        }
        return;
      }
      if (offset < a) await this.writeLocked(new Uint8Array(a - offset), offset);
      await this.remapClusters(
        a / cs,
        Math.ceil(b / cs),
        holes ? 'hole' : opts.mayUnmap ? 'zero' : 'zero-keep',
      );
      const tail = Math.min(b, end);
      if (tail < end) await this.writeLocked(new Uint8Array(end - tail), tail);
    });
  }

  /**
   * Discard: whole clusters become unallocated (they read from the backing
   * again, or zeros); partial clusters are left alone, as the contract allows.
   */
  async discard(offset: number, length: number): Promise<void> {
    this.checkWritable();
    const cs = this.cs;
    const end = offset + length;
    const a = Math.ceil(offset / cs);
    const b = end === this.h.size ? Math.ceil(end / cs) : Math.floor(end / cs);
    if (a >= b) return;
    await this.mutex.run(async () => {
      await this.beginChange();
      await this.remapClusters(a, b, 'hole');
    });
  }

  /**
   * Rewrites the L2 entries of guest clusters [c0, c1): `zero` (flag only),
   * `zero-keep` (flag, keeping an owned allocation) or `hole`; then drops the
   * references that went away.
   */
  private async remapClusters(c0: number, c1: number, to: 'zero' | 'zero-keep' | 'hole'): Promise<void> {
    for (let c = c0; c < c1; ) {
      const l1i = Math.floor(c / this.l2Entries);
      const stop = Math.min(c1, (l1i + 1) * this.l2Entries);
      if (to === 'hole' && this.l2Offset(l1i) === 0) {
        c = stop;
        continue;
      }
      const { offset: l2off, table } = await this.l2ForWrite(l1i);
      const i0 = c % this.l2Entries;
      const released: L2Entry[] = [];
      for (let k = c; k < stop; k++) {
        const e = this.entry(table, k % this.l2Entries);
        const keep =
          to === 'zero-keep' && e.kind !== 'compressed' && e.offset !== 0 && (await this.ownsCluster(e));
        const [hi, lo] = keep ? standardEntry(e.offset, true, true) : [0, to === 'hole' ? 0 : 1];
        writeHiLo(table, k % this.l2Entries, hi, lo);
        if (!keep) released.push(e);
      }
      await this.writeL2Entries(l2off, table, i0, i0 + (stop - c));
      await this.releaseAll(released);
      c = stop;
    }
  }

  async flush(): Promise<void> {
    await this.mutex.run(async () => {
      await this.flushMeta();
      // Nothing written since the last flush: no fsync (close after convert's flush).
      if (!this.unflushed && !this.dirtyMarked) return;
      this.unflushed = false;
      await this.storage.flush();
      if (this.dirtyMarked) {
        await this.endChanges();
        await this.storage.flush();
      }
      this.unflushed = false;
    });
  }

  /**
   * Close does not fsync (like qemu-img's default cache mode; callers that
   * need durability flush first), except to clear a lazy-refcounts dirty
   * bit, which must only reach the disk after everything it covers.
   */
  async close(): Promise<void> {
    try {
      if (!this.readOnly) {
        await this.mutex.run(async () => {
          await this.flushMeta();
          await this.endChanges();
        });
      }
    } finally {
      await this.storage.close();
    }
  }
}
