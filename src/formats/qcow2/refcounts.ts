/**
 * Refcounts (qcow2.txt, "Host cluster management") and cluster allocation.
 *
 * Two levels: the refcount table (contiguous, u64 entries, bits 9-63 = offset
 * of a refcount block, 0 = not allocated: all its refcounts are 0) and
 * refcount blocks of one cluster, holding cluster_size*8/refcount_bits
 * entries of refcount_bits each (big-endian; below 8 bits, bit 0 is the least
 * significant bit of the byte).
 *
 * Every change is written through at once, in crash-safe order: a new
 * refcount block is written before the table points at it, and callers set a
 * cluster's refcount before anything references the cluster (and drop the
 * reference before the refcount), so a kill at any point leaves at worst
 * leaked clusters.
 */
import { isAllZero } from '../../core/bytes.js';
import { corrupt, unsupported } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import { MAX_REFTABLE_BYTES } from './header.js';

export interface RefcountHost {
  readonly storage: Storage;
  readonly file: string;
  readonly clusterSize: number;
  readonly refcountOrder: number;
  /** Current length of the image file (grows as clusters are written). */
  fileSize: number;
  /** Called after a grown refcount table has been written, to point the header at it. */
  tableMoved(offset: number, clusters: number): Promise<void>;
}

type Range = [number, number];

export class Refcounts {
  readonly bits: number;
  readonly perBlock: number;
  private readonly cs: number;
  private readonly blocks = new Map<number, Uint8Array>();
  /** Lowest cluster index that may be free. */
  private hint = 0;
  private deferTableWrites = false;
  private readonly max: number;
  /**
   * Write-back of increments (the image's write path sets this around data
   * cluster allocation): raised refcounts stay in the cached block, marked
   * dirty, until flushDirty(). Writing an increment late only risks a leak
   * if the process dies; the image writes them before any entry that
   * references the clusters. Decrements are always written through.
   */
  writeBack = false;
  /** Cached blocks with increments not yet written: block offset -> [block, from byte, to byte). */
  private readonly dirty = new Map<number, [Uint8Array, number, number]>();

  constructor(
    private readonly h: RefcountHost,
    /** The refcount table, raw big-endian bytes. */
    public table: Uint8Array,
    public tableOffset: number,
  ) {
    this.cs = h.clusterSize;
    this.bits = 2 ** h.refcountOrder;
    this.perBlock = (this.cs * 8) / this.bits;
    this.max = this.bits >= 53 ? Number.MAX_SAFE_INTEGER : 2 ** this.bits - 1;
  }

  /** The largest refcount refcount_bits can hold. */
  get maxRefcount(): number {
    return this.max;
  }

  get tableEntries(): number {
    return this.table.length / 8;
  }

  get tableClusters(): number {
    return this.table.length / this.cs;
  }

  /** Offset of refcount block `ti`, 0 if none; checked against the file. */
  blockOffset(ti: number): number {
    if (ti >= this.tableEntries) return 0;
    const t = this.table;
    const at = ti * 8;
    const hi = ((t[at] << 24) | (t[at + 1] << 16) | (t[at + 2] << 8) | t[at + 3]) >>> 0;
    const lo = ((t[at + 4] << 24) | (t[at + 5] << 16) | (t[at + 6] << 8) | t[at + 7]) >>> 0;
    if (hi === 0 && lo === 0) return 0;
    if (hi >= 2 ** 21)
      throw corrupt(
        this.h.file,
        `refcount table entry ${ti} (0x${hi.toString(16)}${lo.toString(16).padStart(8, '0')}) is too large`,
      );
    const off = hi * 2 ** 32 + ((lo & ~0x1ff) >>> 0);
    if ((lo & 0x1ff) !== 0 || off % this.cs !== 0) {
      throw corrupt(
        this.h.file,
        `refcount block offset 0x${(hi * 2 ** 32 + lo).toString(16)} (table entry ${ti}) is not aligned to the cluster size ${this.cs}`,
      );
    }
    if (off === 0 || off + this.cs > this.h.fileSize) {
      throw corrupt(
        this.h.file,
        `refcount block offset 0x${off.toString(16)} (table entry ${ti}) is past end of file (size ${this.h.fileSize})`,
      );
    }
    return off;
  }

  private setTableEntry(ti: number, offset: number): void {
    const v = new DataView(this.table.buffer, this.table.byteOffset + ti * 8, 8);
    v.setUint32(0, Math.floor(offset / 2 ** 32));
    v.setUint32(4, offset % 2 ** 32);
  }

  /**
   * Refcount block `ti` when it is cached (undefined: not cached, or not
   * allocated), so the hot paths need no await when it is.
   */
  private cached(ti: number): Uint8Array | undefined {
    const off = this.blockOffset(ti);
    return off === 0 ? undefined : this.blocks.get(off);
  }

  /** Loads refcount block `ti`; undefined when it is not allocated. */
  async block(ti: number): Promise<Uint8Array | undefined> {
    const off = this.blockOffset(ti);
    if (off === 0) return undefined;
    let b = this.blocks.get(off);
    if (!b) {
      b = new Uint8Array(this.cs);
      await this.h.storage.read(b, off);
      if (this.blocks.size >= 256) {
        // Dirty blocks stay until written.
        for (const k of this.blocks.keys()) {
          if (!this.dirty.has(k)) {
            this.blocks.delete(k);
            break;
          }
        }
      }
      this.blocks.set(off, b);
    }
    return b;
  }

  entry(b: Uint8Array, i: number): number {
    const bits = this.bits;
    if (bits < 8) return (b[(i * bits) >> 3] >> ((i * bits) & 7)) & ((1 << bits) - 1);
    if (bits === 8) return b[i];
    if (bits === 16) return (b[i * 2] << 8) | b[i * 2 + 1];
    const v = new DataView(b.buffer, b.byteOffset);
    if (bits === 32) return v.getUint32(i * 4);
    return Math.min(v.getUint32(i * 8) * 2 ** 32 + v.getUint32(i * 8 + 4), Number.MAX_SAFE_INTEGER);
  }

  private setEntry(b: Uint8Array, i: number, value: number): void {
    const bits = this.bits;
    if (bits < 8) {
      const at = (i * bits) >> 3;
      const shift = (i * bits) & 7;
      const mask = ((1 << bits) - 1) << shift;
      b[at] = (b[at] & ~mask) | ((value << shift) & mask);
    } else if (bits === 8) b[i] = value;
    else if (bits === 16) {
      b[i * 2] = value >> 8;
      b[i * 2 + 1] = value & 0xff;
    } else {
      const v = new DataView(b.buffer, b.byteOffset);
      if (bits === 32) v.setUint32(i * 4, value);
      else {
        v.setUint32(i * 8, Math.floor(value / 2 ** 32));
        v.setUint32(i * 8 + 4, value % 2 ** 32);
      }
    }
  }

  /** Refcount of host cluster `ci`. */
  async get(ci: number): Promise<number> {
    const ti = Math.floor(ci / this.perBlock);
    const b = this.cached(ti) ?? (await this.block(ti));
    return b ? this.entry(b, ci % this.perBlock) : 0;
  }

  /**
   * Applies `fn` to the refcounts of clusters [ci, ci+n), writing each touched
   * block's changed bytes through. Creates refcount blocks as needed.
   */
  async modify(
    ci: number,
    n: number,
    fn: (old: number, c: number) => number,
    reserved: Range[] = [],
    /** fn adds exactly this (lets a run of zeros rise to 1 without a call per cluster). */
    delta?: number,
  ): Promise<void> {
    const end = ci + n;
    for (let c = ci; c < end; ) {
      const ti = Math.floor(c / this.perBlock);
      const first = c % this.perBlock;
      const count = Math.min(end - c, this.perBlock - first);
      let b = this.cached(ti) ?? (await this.block(ti));
      if (!b) {
        await this.ensureBlock(ti, [...reserved, [ci, end]]);
        b = (await this.block(ti))!;
      }
      const bytes = this.bits / 8;
      if (delta === 1 && this.bits >= 8 && isAllZero(b.subarray(first * bytes, (first + count) * bytes))) {
        // New clusters (the common case): 0 → 1, big-endian, the last byte of each entry.
        for (let i = 0; i < count; i++) b[(first + i + 1) * bytes - 1] = 1;
        await this.store(ti, b, first, count, false);
        c += count;
        continue;
      }
      // Compute and check every new value before touching the cached block.
      const values = new Array<number>(count);
      let lower = false;
      for (let i = 0; i < count; i++) {
        const old = this.entry(b, first + i);
        const v = fn(old, c + i);
        if (v < old) lower = true;
        if (v < 0) throw corrupt(this.h.file, `refcount of cluster ${c + i} would drop below 0`);
        if (v > this.max) {
          throw unsupported(
            `${this.h.file}: refcount of cluster ${c + i} would exceed ${this.max} (refcount_bits ${this.bits})`,
          );
        }
        values[i] = v;
      }
      for (let i = 0; i < count; i++) {
        this.setEntry(b, first + i, values[i]);
        if (values[i] === 0 && c + i < this.hint) this.hint = c + i;
      }
      await this.store(ti, b, first, count, lower);
      c += count;
    }
  }

  /** Writes changed entries [first, first+count) of block `ti` through, or holds rises back (writeBack). */
  private async store(
    ti: number,
    b: Uint8Array,
    first: number,
    count: number,
    lower: boolean,
  ): Promise<void> {
    const from = Math.floor((first * this.bits) / 8);
    const to = Math.ceil(((first + count) * this.bits) / 8);
    const off = this.blockOffset(ti);
    if (this.writeBack && !lower) {
      const d = this.dirty.get(off);
      this.dirty.set(off, d ? [b, Math.min(d[1], from), Math.max(d[2], to)] : [b, from, to]);
    } else {
      await this.h.storage.write(b.subarray(from, to), off + from);
    }
  }

  /** How many blocks hold increments not yet written. */
  get dirtyBlocks(): number {
    return this.dirty.size;
  }

  /** Writes the increments held back by writeBack. */
  async flushDirty(): Promise<void> {
    for (const [off, [b, from, to]] of this.dirty) {
      await this.h.storage.write(b.subarray(from, to), off + from);
      this.dirty.delete(off);
    }
  }

  /** Adds `delta` to every refcount in [ci, ci+n). */
  add(ci: number, n: number, delta: number, reserved: Range[] = []): Promise<void> {
    return this.modify(ci, n, (old) => old + delta, reserved, delta);
  }

  /** Adds `delta` to every cluster touched by host bytes [offset, offset+length). */
  addBytes(offset: number, length: number, delta: number): Promise<void> {
    const a = Math.floor(offset / this.cs);
    const b = Math.ceil((offset + length) / this.cs);
    return this.add(a, b - a, delta);
  }

  /** Finds `n` contiguous free clusters (refcount 0) outside `reserved`, from the hint. */
  async findFree(n: number, reserved: Range[] = []): Promise<number> {
    // Most often (appending data) the run at the hint is free: its entries' bytes are zeros.
    const first = this.hint % this.perBlock;
    if (reserved.length === 0 && this.bits >= 8 && first + n <= this.perBlock) {
      const ti = Math.floor(this.hint / this.perBlock);
      const b = this.cached(ti) ?? (await this.block(ti));
      const bytes = this.bits / 8;
      if (!b || isAllZero(b.subarray(first * bytes, (first + n) * bytes))) return this.hint;
    }
    let start = this.hint;
    let run = 0;
    let firstFreeSeen = -1;
    for (let c = this.hint; ; ) {
      const ti = Math.floor(c / this.perBlock);
      const b = await this.block(ti);
      const blockEnd = (ti + 1) * this.perBlock;
      for (; c < blockEnd; c++) {
        const free =
          (!b || this.entry(b, c % this.perBlock) === 0) && !reserved.some(([x, y]) => c >= x && c < y);
        if (free) {
          if (firstFreeSeen < 0) firstFreeSeen = c;
          if (run === 0) start = c;
          if (++run === n) {
            if (reserved.length === 0) this.hint = firstFreeSeen;
            return start;
          }
        } else run = 0;
      }
    }
  }

  /** Allocates `n` contiguous clusters (refcount 1) and returns the host offset. */
  async alloc(n: number, reserved: Range[] = []): Promise<number> {
    const ci = await this.findFree(n, reserved);
    await this.add(ci, n, 1, reserved);
    if (ci === this.hint) this.hint = ci + n;
    return ci * this.cs;
  }

  /** Allocates cluster `ci` if it is free (to extend a run in place). */
  async tryAllocAt(ci: number): Promise<boolean> {
    if ((await this.get(ci)) !== 0) return false;
    await this.add(ci, 1, 1);
    return true;
  }

  /** Creates refcount block `ti` (growing the table if needed). */
  private async ensureBlock(ti: number, reserved: Range[]): Promise<void> {
    if (ti >= this.tableEntries) await this.growTable(ti, reserved);
    if (this.blockOffset(ti) !== 0) return;
    const x = await this.findFree(1, reserved);
    const nb = new Uint8Array(this.cs);
    if (Math.floor(x / this.perBlock) === ti) {
      this.setEntry(nb, x % this.perBlock, 1);
    } else {
      await this.add(x, 1, 1, [...reserved, [x, x + 1]]);
    }
    const off = x * this.cs;
    await this.h.storage.write(nb, off);
    this.h.fileSize = Math.max(this.h.fileSize, off + this.cs);
    this.blocks.set(off, nb);
    this.setTableEntry(ti, off);
    // The new block's own refcount (in another block) is on disk before anything points at it.
    await this.flushDirty();
    if (!this.deferTableWrites)
      await this.h.storage.write(this.table.subarray(ti * 8, ti * 8 + 8), this.tableOffset + ti * 8);
  }

  /**
   * Moves the refcount table to a larger place: new blocks and the new table
   * are written first, then the header points at it, then the old table is freed.
   */
  private async growTable(ti: number, reserved: Range[]): Promise<void> {
    const oldOffset = this.tableOffset;
    const oldClusters = this.tableClusters;
    let clusters = Math.max(Math.ceil(oldClusters * 1.5), Math.ceil(((ti + 1) * 8) / this.cs) + 1);
    if (clusters * this.cs > MAX_REFTABLE_BYTES) {
      clusters = MAX_REFTABLE_BYTES / this.cs;
      if (ti >= (clusters * this.cs) / 8)
        throw unsupported(
          `${this.h.file}: image would need a refcount table larger than ${MAX_REFTABLE_BYTES} bytes`,
        );
    }
    const t = await this.findFree(clusters, reserved);
    const next = new Uint8Array(clusters * this.cs);
    next.set(this.table);
    const prevDefer = this.deferTableWrites;
    this.table = next;
    this.deferTableWrites = true;
    try {
      await this.add(t, clusters, 1, [...reserved, [t, t + clusters]]);
    } finally {
      this.deferTableWrites = prevDefer;
    }
    await this.flushDirty();
    await this.h.storage.write(this.table, t * this.cs);
    this.h.fileSize = Math.max(this.h.fileSize, (t + clusters) * this.cs);
    this.tableOffset = t * this.cs;
    await this.h.tableMoved(this.tableOffset, clusters);
    await this.add(oldOffset / this.cs, oldClusters, -1);
  }

  /** Forgets cached blocks (after a repair rewrote them). */
  dropCache(): void {
    if (this.dirty.size > 0)
      throw new Error('internal error: refcount cache dropped with unwritten increments');
    this.blocks.clear();
    this.hint = 0;
  }
}
