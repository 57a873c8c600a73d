/**
 * An open VDI: the block map in memory, blocks of `blockSize` bytes.
 *
 *   map entry      | extents() | read here
 *   ---------------|-----------|--------------------------------------------
 *   index i        | data      | data offset + i * block size
 *   0xFFFFFFFE     | zero      | zeros (also in a differencing image)
 *   0xFFFFFFFF     | hole      | zeros (differencing: the parent, via the chain)
 *
 * New blocks take the next index (blocks allocated), written whole (the rest
 * zero-filled), then the map entry and the header's count. Zeroing a whole
 * unallocated block sets the zero marker; an allocated block keeps its index
 * (qemu-img check requires the indexes 0 .. allocated-1 each used once).
 * Granularity is the block size, so the chain copies-on-write whole blocks.
 */
import { blockPieces, coversBlock, eachBlockPiece } from '../../core/blocks.js';
import { alignUp, isAllZero, viewOf } from '../../core/bytes.js';
import type {
  CheckResult,
  DiskFeatures,
  DiskImpl,
  Extent,
  FormatInfo,
  HostSpan,
  HostSpanPurpose,
} from '../../core/disk.js';
import { corrupt, invalid, PlatterError, unsupported } from '../../core/errors.js';
import { zeroHostData } from '../../core/host-holes.js';
import { Mutex } from '../../core/mutex.js';
import type { Storage } from '../../core/storage.js';
import {
  commentWithParent,
  serializeHeader,
  TYPE_DIFF,
  TYPE_DYNAMIC,
  TYPE_STATIC,
  UNALLOCATED,
  uuidText,
  type VdiHeader,
  ZERO_BLOCK,
} from './header.js';

export const MAX_VDI_SIZE = 2 ** 50; // 1 PiB: far past any real image; keeps offsets exact

/** The most blocks platter keeps a map of in memory (256 MiB): 64 TiB in the usual 1 MiB blocks. */
export const MAX_BLOCKS = 64 * 2 ** 20;

/** The blocks that cover `size` bytes; refused past MAX_BLOCKS, at open, create and resize alike. */
export function blocksFor(name: string, size: number, blockSize: number): number {
  const n = Math.ceil(size / blockSize);
  if (n > MAX_BLOCKS) {
    throw unsupported(
      `${name}: ${size} bytes in blocks of ${blockSize} are ${n} blocks, more than platter handles (${MAX_BLOCKS})`,
    );
  }
  return n;
}

export interface ParentIdentity {
  uuidImage: Uint8Array;
  uuidModify: Uint8Array;
}

export interface VdiOptions {
  storage: Storage;
  header: VdiHeader;
  bmap: Uint32Array;
  /** Entries that point past the end of the file: any access is a corrupt-image error. */
  bad: Map<number, string>;
  readOnly: boolean;
  backing?: { name: string; format?: string };
  /** Reads another VDI's identity, for setBacking. */
  parentIdentity: (name: string) => Promise<ParentIdentity>;
}

export class VdiDisk implements DiskImpl {
  size: number;
  readonly granularity: number;
  readonly storages: readonly Storage[];
  readonly features: DiskFeatures;
  private readonly storage: Storage;
  private h: VdiHeader;
  private bmap: Uint32Array;
  private readonly bs: number;
  private readonly meta = new Mutex();
  /** Blocks being allocated: a second writer waits for the first. */
  private readonly pending = new Map<number, Promise<void>>();
  /** Map entries [from, to) allocated by allocateSpans and not written yet. */
  private unwritten = { from: Number.POSITIVE_INFINITY, to: 0 };
  private backing?: { name: string; format?: string };

  constructor(private readonly o: VdiOptions) {
    this.storage = o.storage;
    this.storages = [o.storage];
    this.h = o.header;
    this.bmap = o.bmap;
    this.bs = o.header.blockSize;
    this.granularity = this.bs;
    this.size = o.header.diskSize;
    this.backing = o.backing;
    const f: DiskFeatures = { check: () => this.check(), resize: (n, x) => this.resize(n, x.shrink) };
    if (this.h.type !== TYPE_STATIC) {
      f.makeEmpty = () => this.makeEmpty();
      f.setBacking = (b) => this.setBacking(b);
    }
    this.features = f;
    if (o.readOnly) {
      this.write = undefined;
      this.writeZeroes = undefined;
    }
  }

  private get name(): string {
    return this.storage.name;
  }

  private dataAt(b: number): number {
    const why = this.o.bad.get(b);
    if (why) throw corrupt(this.name, why);
    return this.h.offsetData + this.bmap[b] * this.bs;
  }

  private isAllocated(b: number): boolean {
    return this.bmap[b] < ZERO_BLOCK;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    await eachBlockPiece(buf, offset, this.bs, (sub, b, within) => {
      if (this.isAllocated(b)) return this.storage.read(sub, this.dataAt(b) + within);
      sub.fill(0);
    });
  }

  /**
   * Reads: allocated blocks. Allocate: allocated blocks in place, and
   * unallocated blocks (whole ones only in a differencing image) get the next
   * block indices at once; their map entries and the count are written at the
   * next flush (allocateMeta), and the caller writes the range first.
   */
  async hostSpans(offset: number, length: number, purpose: HostSpanPurpose): Promise<HostSpan[] | null> {
    if (purpose === 'allocate') return this.allocateSpans(offset, length);
    if (purpose !== 'read') return null;
    const spans: HostSpan[] = [];
    for (const p of blockPieces(offset, length, this.bs)) {
      if (!this.isAllocated(p.block)) return null;
      const at = this.dataAt(p.block) + p.within;
      spans.push({ offset: offset + p.at, length: p.length, storage: this.storage, at });
    }
    return spans;
  }

  private allocateSpans(offset: number, length: number): HostSpan[] | null {
    if (!this.write) return null;
    const pieces = [...blockPieces(offset, length, this.bs)];
    let fresh = 0;
    for (const p of pieces) {
      if (this.o.bad.has(p.block) || this.pending.has(p.block)) return null;
      if (this.isAllocated(p.block)) continue;
      // A differencing image's unwritten bytes come from its parent: only whole blocks there.
      if (this.h.type !== TYPE_DYNAMIC && !coversBlock(p, this.bs, this.size)) return null;
      fresh++;
    }
    if (this.h.blocksAllocated + fresh > ZERO_BLOCK) return null; // write() says why
    const spans: HostSpan[] = [];
    for (const p of pieces) {
      if (!this.isAllocated(p.block)) {
        const index = this.h.blocksAllocated;
        this.h.blocksAllocated = index + 1;
        this.bmap[p.block] = index;
        this.unwritten.from = Math.min(this.unwritten.from, p.block);
        this.unwritten.to = Math.max(this.unwritten.to, p.block + 1);
      }
      spans.push({
        offset: offset + p.at,
        length: p.length,
        storage: this.storage,
        at: this.dataAt(p.block) + p.within,
      });
    }
    return spans;
  }

  /**
   * Writes the map entries and the count that allocateSpans left for later,
   * and makes the file reach the end of the last block (a block the caller
   * wrote only in part reads zeros for the rest).
   */
  private async allocateMeta(): Promise<void> {
    const { from, to } = this.unwritten;
    if (from >= to) return;
    this.unwritten = { from: Number.POSITIVE_INFINITY, to: 0 };
    await this.meta.run(async () => {
      await this.writeMap(from, to);
      await this.writeCount();
      const end = this.h.offsetData + this.h.blocksAllocated * this.bs;
      if ((await this.storage.size()) < end) await this.storage.truncate(end);
    });
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / this.bs);
      const n = Math.min((b + 1) * this.bs, end) - pos;
      const e = this.bmap[b];
      if (this.o.bad.has(b)) this.dataAt(b);
      const status = e < ZERO_BLOCK ? 'data' : e === ZERO_BLOCK ? 'zero' : 'hole';
      const last = out[out.length - 1];
      if (last && last.status === status) last.length += n;
      else out.push({ offset: pos, length: n, status, depth: 0 });
      pos += n;
    }
    return out;
  }

  write? = async (buf: Uint8Array, offset: number): Promise<void> => {
    await eachBlockPiece(buf, offset, this.bs, (piece, b, within) => this.writePiece(b, piece, within));
  };

  private async writePiece(b: number, piece: Uint8Array, within: number): Promise<void> {
    for (;;) {
      if (this.isAllocated(b)) return this.storage.write(piece, this.dataAt(b) + within);
      const p = this.pending.get(b);
      if (!p) return this.allocate(b, piece, within);
      await p.catch(() => undefined);
    }
  }

  /**
   * The index is taken at once, the block's data written in parallel with other
   * allocations, and only the map entry and the count under the metadata lock.
   */
  private allocate(b: number, piece: Uint8Array, within: number): Promise<void> {
    // Unallocated and zero blocks both start as zeros here (the chain fills a hole from below first).
    let whole = piece;
    if (within !== 0 || piece.length !== this.bs) {
      whole = new Uint8Array(this.bs);
      whole.set(piece, within);
    }
    const index = this.h.blocksAllocated;
    if (index >= ZERO_BLOCK) {
      return Promise.reject(new PlatterError('ENOSPC', `${this.name}: VDI block index space exhausted`));
    }
    this.h.blocksAllocated = index + 1;
    const p = (async () => {
      await this.storage.write(whole, this.h.offsetData + index * this.bs);
      await this.meta.run(async () => {
        this.bmap[b] = index;
        await this.writeMap(b, b + 1);
        await this.writeCount();
      });
    })();
    this.pending.set(b, p);
    p.finally(() => this.pending.delete(b)).catch(() => undefined);
    return p;
  }

  private async writeMap(from: number, to: number): Promise<void> {
    const buf = new Uint8Array((to - from) * 4);
    const v = viewOf(buf);
    for (let i = from; i < to; i++) v.setUint32((i - from) * 4, this.bmap[i], true);
    await this.storage.write(buf, this.h.offsetBmap + from * 4);
  }

  private async writeCount(): Promise<void> {
    const buf = new Uint8Array(4);
    viewOf(buf).setUint32(0, this.h.blocksAllocated, true);
    await this.storage.write(buf, 388);
  }

  writeZeroes? = async (offset: number, length: number, opts: { mayUnmap: boolean }): Promise<void> => {
    void opts;
    const end = offset + length;
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / this.bs);
      const blockEnd = Math.min((b + 1) * this.bs, this.size);
      const n = Math.min(blockEnd, end) - pos;
      const whole = pos === b * this.bs && n === blockEnd - b * this.bs;
      if (this.isAllocated(b)) {
        // Holes of the host file (a block the copy engine allocated and left unwritten) read zeros already.
        const at = this.dataAt(b) + (pos - b * this.bs);
        await zeroHostData(this.storage, at, n, (zeros, rel) => this.storage.write(zeros, at + rel));
      } else if (this.bmap[b] === UNALLOCATED && this.h.type === TYPE_DYNAMIC) {
        // Nothing below a dynamic image: an unallocated block already reads zeros.
      } else if (this.bmap[b] === UNALLOCATED) {
        if (whole) {
          await this.meta.run(async () => {
            if (this.bmap[b] !== UNALLOCATED) return;
            this.bmap[b] = ZERO_BLOCK;
            await this.writeMap(b, b + 1);
          });
        } else {
          await this.write!(new Uint8Array(n), pos);
        }
      }
      pos += n;
    }
  };

  async flush(): Promise<void> {
    await this.allocateMeta();
    await this.storage.flush();
  }

  async close(): Promise<void> {
    try {
      await this.allocateMeta();
    } finally {
      await this.storage.close();
    }
  }

  async info(): Promise<FormatInfo> {
    const sub =
      this.h.type === TYPE_STATIC ? 'static' : this.h.type === TYPE_DIFF ? 'differencing' : 'dynamic';
    return {
      format: 'vdi',
      subformat: sub,
      granularity: this.bs,
      backing: this.backing,
      corrupt: this.o.bad.size > 0,
      details: {
        uuid: uuidText(this.h.uuidImage),
        modificationUuid: uuidText(this.h.uuidModify),
        parentUuid: this.h.type === TYPE_DIFF ? uuidText(this.h.uuidLink) : undefined,
        blocks: this.h.blocksInImage,
        allocatedBlocks: this.h.blocksAllocated,
        comment: this.h.comment || undefined,
      },
    };
  }

  // ---- metadata rewrites ----

  private async writeHeader(): Promise<void> {
    await this.storage.write(serializeHeader(this.h), 0);
  }

  private ensureWritable(): void {
    if (!this.write) throw new PlatterError('EREADONLY', `${this.name}: image is open read-only`);
  }

  private async resize(newSize: number, shrink: boolean): Promise<void> {
    this.ensureWritable();
    if (newSize % 512 !== 0)
      throw invalid(`${this.name}: a VDI size must be a multiple of 512 bytes (got ${newSize})`);
    if (newSize <= 0 || newSize > MAX_VDI_SIZE)
      throw invalid(`${this.name}: VDI size ${newSize} is out of range`);
    const need = blocksFor(this.name, newSize, this.bs);
    await this.meta.run(async () => {
      const oldBlocks = this.h.blocksInImage;
      if (newSize < this.size) {
        if (!shrink)
          throw invalid(`${this.name}: shrinking needs --shrink (from ${this.size} to ${newSize})`);
        await this.shrinkTo(newSize, need);
      } else if (need > oldBlocks) {
        await this.growMap(need);
      }
      this.size = newSize;
      this.h.diskSize = newSize;
      await this.writeHeader();
    });
  }

  private async shrinkTo(newSize: number, need: number): Promise<void> {
    // The cut-off part must hold no data; allocated blocks past the end must be the highest indexes.
    const tail: number[] = [];
    for (let b = Math.floor(newSize / this.bs); b < this.h.blocksInImage; b++) {
      if (!this.isAllocated(b)) continue;
      const from = Math.max(newSize, b * this.bs);
      const to = Math.min((b + 1) * this.bs, this.size);
      const buf = new Uint8Array(to - from);
      await this.storage.read(buf, this.dataAt(b) + (from - b * this.bs));
      if (!isAllZero(buf)) {
        throw invalid(
          `${this.name}: cannot shrink to ${newSize}: the part being cut off holds data (block ${b})`,
        );
      }
      if (b >= need) tail.push(this.bmap[b]);
    }
    tail.sort((x, y) => x - y);
    const top = this.h.blocksAllocated;
    if (tail.some((idx, i) => idx !== top - tail.length + i)) {
      throw invalid(
        `${this.name}: cannot shrink to ${newSize}: blocks past the new end are allocated in the middle of the file`,
      );
    }
    for (let b = need; b < this.h.blocksInImage; b++) this.bmap[b] = UNALLOCATED;
    this.h.blocksAllocated = top - tail.length;
    // The map keeps its length on disk; only blocksInImage entries count.
    const kept = this.bmap.slice(0, need);
    await this.writeMap(need, this.h.blocksInImage);
    this.bmap = kept;
    this.h.blocksInImage = need;
    if (tail.length > 0) await this.storage.truncate(this.h.offsetData + this.h.blocksAllocated * this.bs);
  }

  /**
   * More map entries. When they do not fit before the data area, the data area
   * starts k blocks later: the blocks at indexes 0..k-1 move to the end of the
   * file and every other index shifts down by k, so no other block moves.
   */
  private async growMap(need: number): Promise<void> {
    const old = this.h.blocksInImage;
    const room = this.h.offsetData - this.h.offsetBmap;
    const grown = new Uint32Array(need).fill(this.h.type === TYPE_STATIC ? 0 : UNALLOCATED);
    grown.set(this.bmap.subarray(0, old));
    if (need * 4 > room) {
      const k = Math.ceil((need * 4 - room) / this.bs);
      const n = this.h.blocksAllocated;
      const base = Math.max(n - k, 0);
      const oldData = this.h.offsetData;
      const newData = oldData + k * this.bs;
      const buf = new Uint8Array(this.bs);
      for (let b = 0; b < old; b++) {
        const e = grown[b];
        if (e >= ZERO_BLOCK) continue;
        if (e < k) {
          const to = base + e;
          await this.storage.read(buf, oldData + e * this.bs);
          await this.storage.write(buf, newData + to * this.bs);
          grown[b] = to;
        } else {
          grown[b] = e - k;
        }
      }
      this.h.offsetData = newData;
    }
    if (this.h.type === TYPE_STATIC) {
      for (let b = old; b < need; b++) grown[b] = this.h.blocksAllocated++;
      await this.storage.truncate(this.h.offsetData + this.h.blocksAllocated * this.bs);
    }
    this.bmap = grown;
    this.h.blocksInImage = need;
    await this.writeMap(0, need);
  }

  private async makeEmpty(): Promise<void> {
    this.ensureWritable();
    await this.meta.run(async () => {
      this.bmap.fill(UNALLOCATED);
      this.o.bad.clear();
      this.h.blocksAllocated = 0;
      await this.writeMap(0, this.bmap.length);
      await this.writeHeader();
      await this.storage.truncate(this.h.offsetData);
    });
  }

  private async setBacking(b: { name: string; format?: string } | null): Promise<void> {
    this.ensureWritable();
    if (b?.format && b.format !== 'vdi') {
      throw unsupported(`${this.name}: a differencing VDI needs a VDI parent, not ${b.format}`);
    }
    const id = b ? await this.o.parentIdentity(b.name) : undefined;
    await this.meta.run(async () => {
      if (b && id) {
        this.h.type = TYPE_DIFF;
        this.h.uuidLink = id.uuidImage;
        this.h.uuidParentModify = id.uuidModify;
      } else {
        this.h.type = TYPE_DYNAMIC;
        this.h.uuidLink = new Uint8Array(16);
        this.h.uuidParentModify = new Uint8Array(16);
      }
      this.h.comment = commentWithParent(this.h.comment, b?.name);
      this.backing = b ? { name: b.name, format: 'vdi' } : undefined;
      await this.writeHeader();
    });
  }

  // ---- check ----

  async check(): Promise<CheckResult> {
    const messages: string[] = [];
    const fileSize = await this.storage.size();
    let corruptions = 0;
    let count = 0;
    const owner = new Map<number, number>();
    for (let b = 0; b < this.h.blocksInImage; b++) {
      const e = this.bmap[b];
      if (e >= ZERO_BLOCK) continue;
      count++;
      if (e >= this.h.blocksAllocated) {
        corruptions++;
        messages.push(
          `block map entry ${b} is index ${e}, not below the allocated count ${this.h.blocksAllocated}`,
        );
      }
      const end = this.h.offsetData + (e + 1) * this.bs;
      if (end > fileSize) {
        corruptions++;
        messages.push(
          `block map entry ${b} (index ${e}) ends at ${end}, past the end of file (size ${fileSize})`,
        );
      }
      const prev = owner.get(e);
      if (prev !== undefined) {
        corruptions++;
        messages.push(`block map entries ${prev} and ${b} both use index ${e}`);
      } else owner.set(e, b);
    }
    if (count !== this.h.blocksAllocated) {
      corruptions++;
      messages.push(`header says ${this.h.blocksAllocated} blocks allocated, the block map has ${count}`);
    }
    return {
      corruptions,
      leaks: 0,
      messages,
      details: { blocks: this.h.blocksInImage, allocatedBlocks: count, blockSize: this.bs, fileSize },
    };
  }
}

export const mapBytes = (blocks: number): number => alignUp(blocks * 4, 512);
