/**
 * An open VHDX file: headers, log replay, region table, metadata and BAT in
 * memory; reads, extents and writes of the virtual disk; metadata changes
 * collected as dirty 4 KiB pages and committed through the log (log.ts) on
 * flush and close.
 *
 * Allocation: a new payload block goes at the end of the file (1 MiB aligned),
 * the file is extended (sparse, or with written zeros when the file is dense or
 * the image fixed), the data is written, then the BAT entry changes in memory;
 * the BAT page reaches the file only through the log at the next commit, after
 * the data is flushed. A kill before the commit loses the unflushed writes and
 * leaves the old, consistent image.
 *
 * Differencing disks keep sector granularity: a write into a NOT_PRESENT block
 * allocates it and sets the written sectors in the chunk's sector bitmap
 * (PARTIALLY_PRESENT); unset sectors are `hole` and read from the parent.
 */
import { blockPieces, coversBlock } from '../../core/blocks.js';
import { alignUp, viewOf } from '../../core/bytes.js';
import type {
  CheckResult,
  DiskFeatures,
  Extent,
  FormatInfo,
  HostSpan,
  HostSpanPurpose,
} from '../../core/disk.js';
import { assert, corrupt, invalid, PlatterError, unsupported } from '../../core/errors.js';
import { hostRuns, zeroHostData } from '../../core/host-holes.js';
import { Mutex } from '../../core/mutex.js';
import { eachZeroPiece, type Storage, writeZerosTo } from '../../core/storage.js';
import type { OpenContext } from '../driver.js';
import {
  Bat,
  bitmapIndex,
  FULLY_PRESENT,
  type Geometry,
  geometry,
  NOT_PRESENT,
  PARTIALLY_PRESENT,
  payloadIndex,
  SB_PRESENT,
  UNMAPPED_V095,
  ZERO,
} from './bat.js';
import { type Guid, guidText, isZeroGuid, newGuid } from './guid.js';
import {
  BAT_GUID,
  findRegion,
  HEADER_OFFSETS,
  HEADER_SIZE,
  type Header,
  METADATA_GUID,
  MiB,
  parseCreator,
  parseHeader,
  parseRegionTable,
  REGION_OFFSETS,
  REGION_SIZE,
  type RegionEntry,
  serializeHeader,
  serializeRegionTable,
} from './layout.js';
import {
  type ActiveLog,
  applyLog,
  buildEntry,
  type LogOp,
  maxPagesPerEntry,
  overlay,
  readActiveLog,
  SECTOR,
} from './log.js';
import {
  type Metadata,
  type ParentLocator,
  parseMetadata,
  serializeMetadata,
  TABLE_SIZE,
  VHDX_LOCATOR_TYPE,
} from './metadata.js';

const MAX_CACHED_BITMAPS = 64;

/** Test hooks: `afterLogWritten` runs once a log entry is durable and named by the headers, before it is applied. */
export const vhdxTestHooks: { afterLogWritten?: () => void | Promise<void> } = {};

export interface VhdxOpenOptions {
  readOnly: boolean;
  /** Write zeros into new blocks instead of leaving them sparse. */
  dense?: boolean;
  /** Skip flushes (open option cache=unsafe). */
  unsafe?: boolean;
  ctx?: OpenContext;
}

export class VhdxImage {
  readonly file: string;
  readonly storage: Storage;
  readonly readOnly: boolean;
  headers: Array<Header | undefined> = [undefined, undefined];
  current = 0;
  creator = '';
  regions: RegionEntry[] = [];
  batRegion!: RegionEntry;
  metaRegion!: RegionEntry;
  md!: Metadata;
  geo!: Geometry;
  bat!: Bat;
  /** Read-only opens of a file with an unreplayed log read through these updates. */
  pendingLog: ActiveLog | undefined;
  logOps: LogOp[] = [];
  replayedOnOpen = 0;
  fileSize = 0;
  /** Where the next block goes. */
  fileEnd = 0;
  dense = false;
  /** qemu's cache=unsafe: no flushes (a destination that is renamed into place only when complete). */
  unsafe = false;
  private bitmaps = new Map<number, Uint8Array>();
  private changedBitmaps = new Set<number>();
  private dirty = new Map<number, Uint8Array>();
  private began = false;
  private dead = false;
  readonly lock = new Mutex();

  private constructor(storage: Storage, readOnly: boolean) {
    this.storage = storage;
    this.file = storage.name;
    this.readOnly = readOnly;
  }

  get header(): Header {
    const h = this.headers[this.current];
    assert(h, 'no current header');
    return h;
  }

  static async open(storage: Storage, opts: VhdxOpenOptions): Promise<VhdxImage> {
    const img = new VhdxImage(storage, opts.readOnly);
    await img.load(opts);
    return img;
  }

  /** Reads file bytes as they are after the pending log (zeros past the end). */
  async readFile(buf: Uint8Array, offset: number): Promise<void> {
    const inFile = Math.max(0, Math.min(buf.length, this.fileSize - offset));
    if (inFile > 0) await this.storage.read(buf.subarray(0, inFile), offset);
    if (inFile < buf.length) buf.fill(0, Math.max(0, inFile));
    if (this.logOps.length > 0) overlay(this.logOps, buf, offset);
  }

  private async load(opts: VhdxOpenOptions): Promise<void> {
    const f = this.file;
    this.fileSize = await this.storage.size();
    if (this.fileSize < MiB)
      throw corrupt(f, `file size ${this.fileSize} is smaller than the 1 MiB header section`);
    const ident = new Uint8Array(520);
    await this.storage.read(ident, 0);
    if (new TextDecoder().decode(ident.subarray(0, 8)) !== 'vhdxfile') {
      throw new PlatterError('EFORMAT', `${f}: not a VHDX image (no "vhdxfile" signature)`);
    }
    this.creator = parseCreator(ident);

    // Headers: the valid one with the higher sequence number is current.
    for (let i = 0; i < 2; i++) {
      const b = new Uint8Array(HEADER_SIZE);
      await this.storage.read(b, HEADER_OFFSETS[i]);
      this.headers[i] = parseHeader(b, f);
    }
    const [h1, h2] = this.headers;
    if (!h1 && !h2) throw corrupt(f, 'both headers are invalid (bad signature, CRC-32C checksum or version)');
    this.current = !h2 ? 0 : !h1 ? 1 : h2.sequence > h1.sequence ? 1 : 0;

    // The log: replayed in place when writable, read through when read-only.
    const active = await readActiveLog(this.storage, this.header, this.fileSize, f);
    if (active) {
      if (opts.readOnly) {
        this.pendingLog = active;
        this.logOps = active.ops;
        this.fileSize = Math.max(this.fileSize, active.lastFileOffset);
      } else {
        await applyLog(this.storage, active);
        this.replayedOnOpen = active.entries;
        this.fileSize = await this.storage.size();
        await this.updateHeaders({ logGuid: new Uint8Array(16) });
      }
    }

    // Region table: the first valid copy.
    let regions: RegionEntry[] | undefined;
    for (const off of REGION_OFFSETS) {
      const b = new Uint8Array(REGION_SIZE);
      await this.readFile(b, off);
      regions = parseRegionTable(b, f);
      if (regions) break;
    }
    if (!regions) throw corrupt(f, 'both region tables are invalid (bad signature or CRC-32C checksum)');
    this.regions = regions;
    for (const r of regions) {
      if (findRegion([r], BAT_GUID) || findRegion([r], METADATA_GUID)) continue;
      if (r.required)
        throw unsupported(`${f}: VHDX region ${guidText(r.guid)} is required but unknown to platter`);
    }
    const bat = findRegion(regions, BAT_GUID);
    const meta = findRegion(regions, METADATA_GUID);
    if (!bat) throw corrupt(f, 'region table has no BAT entry');
    if (!meta) throw corrupt(f, 'region table has no metadata entry');
    const spans: Array<[string, number, number]> = [['header section', 0, MiB]];
    if (this.header.logLength > 0) spans.push(['log', this.header.logOffset, this.header.logLength]);
    for (const [name, r] of [
      ['BAT', bat],
      ['metadata region', meta],
    ] as const) {
      if (r.offset < MiB || r.offset % MiB !== 0)
        throw corrupt(f, `${name} offset ${r.offset} is not a multiple of 1 MiB past the header section`);
      if (r.length === 0 || r.length % MiB !== 0)
        throw corrupt(f, `${name} length ${r.length} is not a non-zero multiple of 1 MiB`);
      if (r.offset + r.length > this.fileSize) {
        throw corrupt(
          f,
          `${name} at ${r.offset} length ${r.length} is past the end of the file (size ${this.fileSize})`,
        );
      }
      spans.push([name, r.offset, r.length]);
    }
    spans.sort((a, b) => a[1] - b[1]);
    for (let i = 1; i < spans.length; i++) {
      const [pn, po, pl] = spans[i - 1];
      if (spans[i][1] < po + pl)
        throw corrupt(f, `${spans[i][0]} at ${spans[i][1]} overlaps the ${pn} (${po}+${pl})`);
    }
    this.batRegion = bat;
    this.metaRegion = meta;

    // Metadata.
    const table = new Uint8Array(TABLE_SIZE);
    await this.readFile(table, meta.offset);
    this.md = await parseMetadata(
      table,
      meta.length,
      async (off, len) => {
        const b = new Uint8Array(len);
        await this.readFile(b, meta.offset + off);
        return b;
      },
      f,
    );
    if (this.md.hasParent && this.md.parent) {
      const pl = this.md.parent;
      if (guidText(pl.type) !== guidText(VHDX_LOCATOR_TYPE)) {
        throw unsupported(`${f}: parent locator type ${guidText(pl.type)} is not the VHDX locator`);
      }
    }
    this.geo = geometry(this.md.size, this.md.blockSize, this.md.logicalSectorSize, this.md.hasParent);
    const batBytes = this.geo.entries * 8;
    if (batBytes > bat.length) {
      throw corrupt(
        f,
        `BAT region length ${bat.length} is below the ${batBytes} bytes that ${this.geo.entries} entries need`,
      );
    }
    const raw = new Uint8Array(alignUp(batBytes, SECTOR));
    await this.readFile(raw, bat.offset);
    this.bat = new Bat(raw);
    this.validateBat();
    this.fileEnd = alignUp(this.fileSize, MiB);
    this.dense = !!opts.dense || this.md.leaveBlockAllocated;
    this.unsafe = !!opts.unsafe;
  }

  /** One guard per BAT entry: states and offsets must fit the file. */
  private validateBat(): void {
    const f = this.file;
    const g = this.geo;
    for (let b = 0; b < g.dataBlocks; b++) {
      const i = payloadIndex(g, b);
      const s = this.bat.state(i);
      if (s === 4) throw corrupt(f, `BAT entry ${i} (block ${b}) has the reserved state 4`);
      if (s === PARTIALLY_PRESENT && !this.md.hasParent) {
        throw corrupt(f, `BAT entry ${i} (block ${b}) is PARTIALLY_PRESENT in a disk without a parent`);
      }
      if (s === FULLY_PRESENT || s === PARTIALLY_PRESENT) {
        const off = this.bat.offset(i);
        if (off < MiB || off + g.blockSize > this.fileSize) {
          throw corrupt(
            f,
            `BAT entry ${i} (block ${b}) offset ${off} is outside the file (block size ${g.blockSize}, file size ${this.fileSize})`,
          );
        }
      }
      if (s === PARTIALLY_PRESENT) {
        const si = bitmapIndex(g, Math.floor(b / g.chunkRatio));
        if (si >= this.bat.length || this.bat.state(si) !== SB_PRESENT) {
          throw corrupt(
            f,
            `BAT entry ${i} (block ${b}) is PARTIALLY_PRESENT but its sector bitmap is not present`,
          );
        }
      }
    }
    for (let c = 0; c < g.bitmapBlocks; c++) {
      const i = bitmapIndex(g, c);
      if (i >= this.bat.length || this.bat.state(i) !== SB_PRESENT) continue;
      const off = this.bat.offset(i);
      if (off < MiB || off + MiB > this.fileSize) {
        throw corrupt(
          f,
          `BAT sector bitmap entry ${i} offset ${off} is outside the file (size ${this.fileSize})`,
        );
      }
    }
  }

  // ---- headers ------------------------------------------------------------

  /**
   * The header update of [MS-VHDX] 2.2.2.1: write the non-current copy with the
   * next sequence number and flush. `copies` 2 repeats it so both are current;
   * 1 suffices when only the latest state matters (a torn write of the new copy
   * leaves the previous state, which is always consistent).
   */
  async updateHeaders(change: Partial<Header>, copies = 2, sync = true): Promise<void> {
    for (let k = 0; k < copies; k++) {
      const cur = this.header;
      const slot = 1 - this.current;
      const next: Header = { ...cur, ...change, sequence: cur.sequence + 1n };
      await this.storage.write(serializeHeader(next), HEADER_OFFSETS[slot]);
      if (sync) await this.barrier();
      this.headers[slot] = next;
      this.current = slot;
    }
  }

  /** Before the first change: new FileWriteGuid and DataWriteGuid. */
  async beginWrite(): Promise<void> {
    if (this.began) return;
    if (this.readOnly) throw new PlatterError('EREADONLY', `${this.file}: image is open read-only`);
    this.began = true;
    await this.updateHeaders({ fileWriteGuid: newGuid(), dataWriteGuid: newGuid() }, 1);
  }

  // ---- blocks and bitmaps -------------------------------------------------

  get hasParent(): boolean {
    return this.md.hasParent;
  }

  private async bitmap(chunk: number): Promise<Uint8Array | undefined> {
    const i = bitmapIndex(this.geo, chunk);
    if (i >= this.bat.length || this.bat.state(i) !== SB_PRESENT) return undefined;
    let bm = this.bitmaps.get(chunk);
    if (!bm) {
      bm = new Uint8Array(MiB);
      await this.readFile(bm, this.bat.offset(i));
      // A bounded cache (1 MiB per 4 GiB chunk); changed bitmaps stay until committed.
      if (this.bitmaps.size >= MAX_CACHED_BITMAPS) {
        for (const c of this.bitmaps.keys()) {
          if (!this.changedBitmaps.has(c)) {
            this.bitmaps.delete(c);
            break;
          }
        }
      }
      this.bitmaps.set(chunk, bm);
    }
    return bm;
  }

  /** Sector bitmap bit index of the first sector of block `b` within its chunk's bitmap. */
  private bitBase(b: number): number {
    return (b % this.geo.chunkRatio) * (this.geo.blockSize / this.geo.logicalSectorSize);
  }

  /** Status runs of block `b` over [from, to) (bytes within the block). */
  async blockRuns(
    b: number,
    from: number,
    to: number,
  ): Promise<Array<[number, number, 'data' | 'zero' | 'hole']>> {
    const i = payloadIndex(this.geo, b);
    const s = this.bat.state(i);
    if (s === FULLY_PRESENT) return [[from, to, 'data']];
    if (s === NOT_PRESENT) return [[from, to, this.hasParent ? 'hole' : 'zero']];
    if (s !== PARTIALLY_PRESENT) return [[from, to, 'zero']];
    const bm = await this.bitmap(Math.floor(b / this.geo.chunkRatio));
    assert(bm, 'partially present block without bitmap');
    const lss = this.geo.logicalSectorSize;
    const base = this.bitBase(b);
    const out: Array<[number, number, 'data' | 'zero' | 'hole']> = [];
    let pos = from;
    while (pos < to) {
      const sector = Math.floor(pos / lss);
      const bit = base + sector;
      const set = (bm[bit >> 3] >> (bit & 7)) & 1;
      const st = set ? 'data' : 'hole';
      const end = Math.min(to, (sector + 1) * lss);
      const last = out[out.length - 1];
      if (last && last[2] === st) last[1] = end;
      else out.push([pos, end, st]);
      pos = end;
    }
    return out;
  }

  async read(buf: Uint8Array, offset: number): Promise<void> {
    const bs = this.geo.blockSize;
    const jobs: Promise<void>[] = [];
    for (const { block: b, within, length: n } of blockPieces(offset, buf.length, bs)) {
      const fileBase = this.bat.offset(payloadIndex(this.geo, b));
      for (const [a, z, st] of await this.blockRuns(b, within, within + n)) {
        const sub = buf.subarray(b * bs + a - offset, b * bs + z - offset);
        if (st === 'data') jobs.push(this.readFile(sub, fileBase + a));
        else sub.fill(0);
      }
    }
    await Promise.all(jobs);
  }

  /**
   * Reads: fully present blocks inside the file, while no pending log lies over
   * the file's bytes (read-only opens of an unreplayed log read through it).
   * Allocate: those in place, and blocks not present (whole ones only in a
   * differencing disk) get a new payload block now (its BAT entry staged, as
   * write() does); the caller then writes the range.
   */
  async hostSpans(offset: number, length: number, purpose: HostSpanPurpose): Promise<HostSpan[] | null> {
    if (purpose === 'write') return null;
    const bs = this.geo.blockSize;
    const pieces = [...blockPieces(offset, length, bs)];
    const place = (): HostSpan[] | null => {
      const spans: HostSpan[] = [];
      for (const p of pieces) {
        const i = payloadIndex(this.geo, p.block);
        const at = this.bat.offset(i) + p.within;
        if (this.bat.state(i) !== FULLY_PRESENT || at + p.length > this.fileSize) return null;
        spans.push({ offset: offset + p.at, length: p.length, storage: this.storage, at });
      }
      return spans;
    };
    if (purpose === 'read') return this.logOps.length === 0 ? place() : null;
    if (this.readOnly || this.logOps.length > 0) return null;
    return this.lock.run(async () => {
      await this.beginWrite();
      for (const p of pieces) {
        const s = this.bat.state(payloadIndex(this.geo, p.block));
        if (s === PARTIALLY_PRESENT) return null;
        // A differencing disk's unwritten sectors come from its parent: only whole blocks here.
        if (s !== FULLY_PRESENT && this.hasParent && !coversBlock(p, bs, this.md.size)) return null;
      }
      for (const p of pieces) {
        const i = payloadIndex(this.geo, p.block);
        if (this.bat.state(i) === FULLY_PRESENT) continue;
        const whole = p.within === 0 && p.length === bs;
        await this.setEntry(i, FULLY_PRESENT, await this.allocate(bs, this.dense && !whole));
      }
      return place();
    });
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const bs = this.geo.blockSize;
    const out: Extent[] = [];
    const push = (at: number, len: number, st: 'data' | 'zero' | 'hole'): void => {
      const last = out[out.length - 1];
      if (last && last.status === st) last.length += len;
      else out.push({ offset: at, length: len, status: st, depth: 0 });
    };
    for (const { block: b, within, at, length: n } of blockPieces(offset, length, bs)) {
      if (out.length >= 4096) break;
      const pos = offset + at;
      const s = this.bat.state(payloadIndex(this.geo, b));
      // Only partially present blocks need their bitmap; the rest is one status per block.
      if (s === PARTIALLY_PRESENT) {
        for (const [a, z, st] of await this.blockRuns(b, within, within + n)) push(b * bs + a, z - a, st);
      } else if (s === FULLY_PRESENT && this.storage.extents && this.logOps.length === 0) {
        // Holes of the host file inside a block read as zeros: report them, so copies skip them.
        const at = this.bat.offset(payloadIndex(this.geo, b)) + within;
        for (const r of await hostRuns(this.storage, at, n)) push(pos + r.offset, r.length, r.status);
      } else {
        push(pos, n, s === FULLY_PRESENT ? 'data' : s === NOT_PRESENT && this.hasParent ? 'hole' : 'zero');
      }
    }
    return out;
  }

  /** Records a metadata change: `data` at file `offset`, committed through the log. */
  private async stage(offset: number, data: Uint8Array): Promise<void> {
    for (let pos = offset; pos < offset + data.length; ) {
      const page = Math.floor(pos / SECTOR) * SECTOR;
      let p = this.dirty.get(page);
      if (!p) {
        p = new Uint8Array(SECTOR);
        await this.readFile(p, page);
        this.dirty.set(page, p);
      }
      const n = Math.min(page + SECTOR, offset + data.length) - pos;
      p.set(data.subarray(pos - offset, pos - offset + n), pos - page);
      pos += n;
    }
  }

  private async setEntry(i: number, state: number, offset: number): Promise<void> {
    this.bat.set(i, state, offset);
    await this.stage(this.batRegion.offset + i * 8, this.bat.bytes.subarray(i * 8, i * 8 + 8));
  }

  /** Extends the file by `length` bytes (1 MiB aligned) and returns where they start. */
  private async allocate(length: number, zeroFill: boolean): Promise<number> {
    const off = this.fileEnd;
    this.fileEnd = off + length;
    if (zeroFill) {
      await writeZerosTo(this.storage, off, length, 4 * MiB);
    } else {
      await this.storage.truncate(this.fileEnd);
    }
    this.fileSize = this.fileEnd;
    return off;
  }

  private async setBits(b: number, from: number, to: number): Promise<void> {
    const g = this.geo;
    const chunk = Math.floor(b / g.chunkRatio);
    let bm = await this.bitmap(chunk);
    if (!bm) {
      const off = await this.allocate(MiB, this.dense);
      bm = new Uint8Array(MiB);
      this.bitmaps.set(chunk, bm);
      await this.setEntry(bitmapIndex(g, chunk), SB_PRESENT, off);
    }
    this.changedBitmaps.add(chunk);
    const lss = g.logicalSectorSize;
    const base = this.bitBase(b);
    const first = base + Math.floor(from / lss);
    const last = base + Math.ceil(to / lss);
    for (let bit = first; bit < last; bit++) bm[bit >> 3] |= 1 << (bit & 7);
    const byteA = first >> 3;
    const byteZ = (last + 7) >> 3;
    await this.stage(this.bat.offset(bitmapIndex(g, chunk)) + byteA, bm.subarray(byteA, byteZ));
  }

  async write(buf: Uint8Array, offset: number): Promise<void> {
    if (!this.began) await this.lock.run(() => this.beginWrite());
    const bs = this.geo.blockSize;
    const jobs: Promise<void>[] = [];
    for (const { block: b, within, at, length: n } of blockPieces(offset, buf.length, bs)) {
      const data = buf.subarray(at, at + n);
      const i = payloadIndex(this.geo, b);
      // Writes into allocated blocks need no metadata and run in parallel; the rest allocate under the lock.
      if (this.bat.state(i) === FULLY_PRESENT)
        jobs.push(this.storage.write(data, this.bat.offset(i) + within));
      else {
        // A block allocated while this write waited for the lock is written outside it.
        const allocated = this.lock.run(async () => {
          if (this.bat.state(i) === FULLY_PRESENT) return this.bat.offset(i);
          await this.writeInBlock(b, within, data);
          return -1;
        });
        jobs.push(allocated.then((off) => (off >= 0 ? this.storage.write(data, off + within) : undefined)));
      }
    }
    await Promise.all(jobs);
  }

  private async writeInBlock(b: number, within: number, data: Uint8Array): Promise<void> {
    const i = payloadIndex(this.geo, b);
    const s = this.bat.state(i);
    const bs = this.geo.blockSize;
    if (s === FULLY_PRESENT || s === PARTIALLY_PRESENT) {
      await this.storage.write(data, this.bat.offset(i) + within);
      if (s === PARTIALLY_PRESENT) await this.setBits(b, within, within + data.length);
      return;
    }
    const whole = within === 0 && data.length === bs;
    const off = await this.allocate(bs, this.dense && !whole);
    await this.storage.write(data, off + within);
    if (this.hasParent && s === NOT_PRESENT && !whole) {
      await this.setEntry(i, PARTIALLY_PRESENT, off);
      await this.setBits(b, within, within + data.length);
    } else {
      await this.setEntry(i, FULLY_PRESENT, off);
    }
  }

  /** Zeros: whole blocks become ZERO (or stay allocated, for fixed images); edges are written. */
  async writeZeroes(offset: number, length: number): Promise<void> {
    const bs = this.geo.blockSize;
    for (const { block: b, within, at, length: n } of blockPieces(offset, length, bs)) {
      const pos = offset + at;
      const i = payloadIndex(this.geo, b);
      const s = this.bat.state(i);
      const wholeBlock = within === 0 && (n === bs || b * bs + n === this.md.size);
      if (wholeBlock && this.hasParent && s !== FULLY_PRESENT && s !== PARTIALLY_PRESENT) {
        // libvhdi reads ZERO blocks of a differencing disk from the parent, so a
        // differencing disk gets a (sparse) block of zeros instead.
        await this.lock.run(async () => {
          await this.beginWrite();
          const off = await this.allocate(bs, this.dense);
          await this.setEntry(i, FULLY_PRESENT, off);
        });
      } else if (wholeBlock && !this.md.leaveBlockAllocated && !this.hasParent) {
        await this.lock.run(async () => {
          await this.beginWrite();
          if (this.bat.state(i) !== ZERO) await this.setEntry(i, ZERO, 0);
        });
      } else if (s === FULLY_PRESENT || s === PARTIALLY_PRESENT || this.hasParent) {
        const zeroAt = (zeros: Uint8Array, rel: number): Promise<void> => this.write(zeros, pos + rel);
        // Holes of the host file in a present block (left unwritten since the block was placed) read zeros already.
        if (s === FULLY_PRESENT && this.logOps.length === 0)
          await zeroHostData(this.storage, this.bat.offset(i) + within, n, zeroAt);
        else await eachZeroPiece(n, zeroAt, 4 * MiB);
      }
      // Otherwise (no parent, block not allocated): it already reads as zeros.
    }
  }

  // ---- commit ---------------------------------------------------------------

  /** An ordering point: everything written so far is durable before what follows. */
  private async barrier(): Promise<void> {
    if (!this.unsafe && !this.closing) await this.storage.flush();
  }

  /**
   * Set while close() commits: like the other drivers and qemu-img's default
   * for convert, close does not fsync (callers that need durability flush
   * first). The log protocol still runs in order, so a killed process (whose
   * writes the page cache keeps, in order) leaves a replayable image; only a
   * power loss before the host writes back can break the ordering.
   */
  private closing = false;

  /** Commits the staged metadata pages through the log. */
  async commit(): Promise<void> {
    if (this.dirty.size === 0 || this.dead) return;
    await this.barrier();
    const pages = [...this.dirty].sort((a, b) => a[0] - b[0]);
    this.dirty.clear();
    this.changedBitmaps.clear();
    const per = maxPagesPerEntry(this.header.logLength);
    if (per < 1)
      throw unsupported(
        `${this.file}: the log (${this.header.logLength} bytes) is too small to update metadata`,
      );
    for (let k = 0; k < pages.length; k += per) {
      const part = pages.slice(k, k + per);
      if (k > 0) await this.barrier(); // the previous entry's LogGuid clear
      const logGuid = newGuid();
      const size = alignUp(await this.storage.size(), MiB);
      const entry = buildEntry(part, logGuid, 1n, 0, size);
      await this.storage.write(entry, this.header.logOffset);
      await this.barrier();
      await this.updateHeaders({ logGuid }, 1);
      if (vhdxTestHooks.afterLogWritten) {
        this.dead = true;
        await vhdxTestHooks.afterLogWritten();
      }
      for (const [off, page] of part) await this.storage.write(page, off);
      await this.barrier();
      // Durable at the next flush, which comes before any later log entry is written.
      await this.updateHeaders({ logGuid: new Uint8Array(16) as Guid }, 1, false);
    }
  }

  async flush(): Promise<void> {
    if (this.readOnly) return;
    await this.lock.run(() => this.commit());
    await this.barrier();
  }

  async close(): Promise<void> {
    try {
      if (!this.readOnly && !this.dead) {
        this.closing = true;
        await this.lock.run(() => this.commit());
      }
    } finally {
      await this.storage.close();
    }
  }

  // ---- metadata rewrites (resize, setBacking, makeEmpty) -----------------

  async writeMetadata(md: Metadata): Promise<void> {
    const region = serializeMetadata(md);
    if (region.length > this.metaRegion.length) {
      throw unsupported(
        `${this.file}: new metadata (${region.length} bytes) does not fit the metadata region`,
      );
    }
    const old = new Uint8Array(region.length);
    await this.readFile(old, this.metaRegion.offset);
    for (let p = 0; p < region.length; p += SECTOR) {
      const a = region.subarray(p, p + SECTOR);
      if (Buffer.compare(a, old.subarray(p, p + SECTOR)) !== 0)
        await this.stage(this.metaRegion.offset + p, a);
    }
    this.md = md;
  }

  async resize(newSize: number, shrink: boolean): Promise<void> {
    const lss = this.md.logicalSectorSize;
    if (newSize % lss !== 0)
      throw invalid(`${this.file}: VHDX size must be a multiple of the sector size ${lss}`);
    if (newSize > 64 * 2 ** 40) throw invalid(`${this.file}: VHDX size is at most 64 TiB`);
    if (newSize < this.md.size && !shrink) throw invalid(`${this.file}: shrinking needs --shrink`);
    await this.lock.run(async () => {
      await this.beginWrite();
      await this.commit();
      const oldGeo = this.geo;
      const g = geometry(newSize, this.md.blockSize, lss, this.md.hasParent);
      const bs = this.md.blockSize;
      // A larger BAT grows in place when its region has room, else it moves to the end of the file.
      const need = alignUp(g.entries * 8, SECTOR);
      if (need > this.bat.bytes.length) {
        const bytes = new Uint8Array(need);
        bytes.set(this.bat.bytes);
        if (need > this.batRegion.length) {
          const length = alignUp(need, MiB);
          const off = await this.allocate(length, this.dense);
          await this.storage.write(bytes, off);
          this.batRegion = { ...this.batRegion, offset: off, length };
          this.regions = this.regions.map((r) => (findRegion([r], BAT_GUID) ? this.batRegion : r));
          const table = serializeRegionTable(this.regions);
          for (const at of REGION_OFFSETS) await this.stage(at, table);
        }
        this.bat = new Bat(bytes);
      }
      // The chunk interleave depends only on block and sector size, so indices carry over.
      if (newSize < this.md.size) {
        for (let i = g.entries; i < oldGeo.entries; i++) {
          if (this.bat.state(i) !== NOT_PRESENT || this.bat.offset(i) !== 0)
            await this.setEntry(i, NOT_PRESENT, 0);
        }
      }
      // Bytes past the old or new end inside the last block must read zeros after growing.
      const cutAt = Math.min(newSize, this.md.size);
      const cut = cutAt % bs;
      if (cut > 0) {
        const i = payloadIndex(g, Math.floor(cutAt / bs));
        const s = i < this.bat.length ? this.bat.state(i) : NOT_PRESENT;
        if (s === FULLY_PRESENT || s === PARTIALLY_PRESENT) {
          await this.storage.write(new Uint8Array(bs - cut), this.bat.offset(i) + cut);
        }
      }
      for (let i = oldGeo.entries; i < g.entries; i++) await this.setEntry(i, NOT_PRESENT, 0);
      if (this.md.hasParent) await this.allocateBitmaps(g, oldGeo.bitmapBlocks);
      if (this.md.leaveBlockAllocated) {
        for (let b = oldGeo.dataBlocks; b < g.dataBlocks; b++) {
          const off = await this.allocate(bs, this.dense);
          await this.setEntry(payloadIndex(g, b), FULLY_PRESENT, off);
        }
      }
      this.geo = g;
      await this.writeMetadata({ ...this.md, size: newSize });
      await this.commit();
    });
  }

  async setParent(parent: ParentLocator | null): Promise<void> {
    await this.lock.run(async () => {
      await this.beginWrite();
      if (!parent) {
        if (this.md.hasParent) {
          // PARTIALLY_PRESENT is invalid without a parent: the block holds zeros where the bitmap was clear.
          const g = this.geo;
          for (let b = 0; b < g.dataBlocks; b++) {
            const i = payloadIndex(g, b);
            if (this.bat.state(i) === PARTIALLY_PRESENT) {
              await this.zeroUnsetSectors(b);
              await this.setEntry(i, FULLY_PRESENT, this.bat.offset(i));
            }
          }
          for (let c = 0; c < g.bitmapBlocks; c++) {
            const i = bitmapIndex(g, c);
            if (i < this.bat.length && this.bat.state(i) !== NOT_PRESENT)
              await this.setEntry(i, NOT_PRESENT, 0);
          }
        }
        await this.writeMetadata({ ...this.md, hasParent: false, parent: undefined });
      } else {
        if (!this.md.hasParent) {
          const g = geometry(this.md.size, this.md.blockSize, this.md.logicalSectorSize, true);
          if (alignUp(g.entries * 8, SECTOR) > this.batRegion.length) {
            throw unsupported(
              `${this.file}: the BAT region has no room for the sector bitmap entries of a differencing disk`,
            );
          }
          const bytes = new Uint8Array(alignUp(g.entries * 8, SECTOR));
          bytes.set(this.bat.bytes.subarray(0, Math.min(bytes.length, this.bat.bytes.length)));
          this.bat = new Bat(bytes);
          this.geo = g;
          await this.allocateBitmaps(g, 0);
        }
        await this.writeMetadata({ ...this.md, hasParent: true, leaveBlockAllocated: false, parent });
      }
      await this.commit();
    });
  }

  /** Sector bitmap blocks for chunks from `from` on (see create.ts: libvhdi wants them present). */
  private async allocateBitmaps(g: Geometry, from: number): Promise<void> {
    for (let c = from; c < g.bitmapBlocks; c++) {
      const i = bitmapIndex(g, c);
      if (this.bat.state(i) === SB_PRESENT) continue;
      const off = await this.allocate(MiB, this.dense);
      this.bitmaps.set(c, new Uint8Array(MiB));
      await this.setEntry(i, SB_PRESENT, off);
    }
  }

  private async zeroUnsetSectors(b: number): Promise<void> {
    const base = this.bat.offset(payloadIndex(this.geo, b));
    for (const [a, z, st] of await this.blockRuns(b, 0, this.geo.blockSize)) {
      if (st !== 'data') await this.storage.write(new Uint8Array(z - a), base + a);
    }
  }

  async makeEmpty(): Promise<void> {
    await this.lock.run(async () => {
      await this.beginWrite();
      const g = this.geo;
      for (let i = 0; i < g.entries && i < this.bat.length; i++) {
        if (this.bat.state(i) !== NOT_PRESENT || this.bat.offset(i) !== 0)
          await this.setEntry(i, NOT_PRESENT, 0);
      }
      this.bitmaps.clear();
      await this.commit();
      const end = Math.max(
        this.batRegion.offset + this.batRegion.length,
        this.metaRegion.offset + this.metaRegion.length,
        this.header.logOffset + this.header.logLength,
      );
      await this.storage.truncate(end);
      this.fileSize = end;
      this.fileEnd = end;
      if (this.hasParent) {
        await this.allocateBitmaps(g, 0);
        // After a commit the parent's DataWriteGuid changed: keep the (now empty) child linked.
        const stale = await this.staleLinkage();
        if (stale) await this.setLinkage(stale.guid);
        await this.commit();
      }
    });
  }

  // ---- parent linkage -------------------------------------------------------

  /** Reads the parent's DataWriteGuid (set by the driver; undefined when the parent cannot be opened). */
  parentGuid?: () => Promise<string | undefined>;

  /** The parent's DataWriteGuid when parent_linkage (and parent_linkage2) do not name it. */
  async staleLinkage(): Promise<{ guid: string; message: string } | undefined> {
    const e = this.md.parent?.entries;
    if (!this.hasParent || !e || !this.parentGuid) return undefined;
    const guid = await this.parentGuid();
    if (!guid) return undefined;
    const norm = (x: string | undefined): string => (x ?? '').replace(/[{}]/g, '').toLowerCase();
    if ([e.get('parent_linkage'), e.get('parent_linkage2')].some((x) => norm(x) === guid.toLowerCase()))
      return undefined;
    return {
      guid,
      message: `parent_linkage ${e.get('parent_linkage')} does not match the parent's DataWriteGuid {${guid}} (the parent was changed)`,
    };
  }

  /** Points parent_linkage at `guid` (staged; the caller commits). */
  async setLinkage(guid: string): Promise<void> {
    const p = this.md.parent;
    if (!p) return;
    const entries = new Map(p.entries);
    entries.set('parent_linkage', `{${guid.toLowerCase()}}`);
    entries.delete('parent_linkage2');
    await this.writeMetadata({ ...this.md, parent: { ...p, entries } });
  }

  // ---- check ----------------------------------------------------------------

  async check(repair: 'none' | 'leaks' | 'all'): Promise<CheckResult> {
    const messages: string[] = [];
    let corruptions = 0;
    let leaks = 0;
    const repaired = { corruptions: 0, leaks: 0 };
    if (this.pendingLog) {
      corruptions++;
      messages.push(
        `the log holds ${this.pendingLog.entries} entries not yet replayed (open for writing or check -r all replays them)`,
      );
    }
    const stale = await this.staleLinkage();
    if (stale) {
      messages.push(stale.message);
      if (repair === 'all' && !this.readOnly) {
        await this.lock.run(async () => {
          await this.beginWrite();
          await this.setLinkage(stale.guid);
          await this.commit();
        });
        repaired.corruptions++;
      } else {
        corruptions++;
      }
    }
    if (this.replayedOnOpen > 0) {
      repaired.corruptions++;
      messages.push(`replayed ${this.replayedOnOpen} log entries on open`);
    }
    const g = this.geo;
    const used: Array<[number, number, string]> = [
      [0, MiB, 'header section'],
      [this.header.logOffset, this.header.logLength, 'log'],
      [this.batRegion.offset, this.batRegion.length, 'BAT'],
      [this.metaRegion.offset, this.metaRegion.length, 'metadata region'],
    ];
    let allocated = 0;
    for (let b = 0; b < g.dataBlocks; b++) {
      const i = payloadIndex(g, b);
      const s = this.bat.state(i);
      if (s === FULLY_PRESENT || s === PARTIALLY_PRESENT) {
        used.push([this.bat.offset(i), g.blockSize, `block ${b}`]);
        allocated++;
      } else if (s === UNMAPPED_V095) {
        messages.push(`BAT entry ${i} (block ${b}) uses the pre-1.0 UNMAPPED state 5`);
      }
    }
    for (let c = 0; c < g.bitmapBlocks; c++) {
      const i = bitmapIndex(g, c);
      if (i >= this.bat.length) continue;
      const s = this.bat.state(i);
      if (s === SB_PRESENT) {
        if (!this.md.hasParent) {
          corruptions++;
          messages.push(`BAT sector bitmap entry ${i} is present in a disk without a parent`);
        }
        used.push([this.bat.offset(i), MiB, `sector bitmap ${c}`]);
      } else if (s !== NOT_PRESENT) {
        corruptions++;
        messages.push(`BAT sector bitmap entry ${i} has the invalid state ${s}`);
      }
    }
    used.sort((a, b) => a[0] - b[0]);
    let end = 0;
    let endName = '';
    for (const [off, len, name] of used) {
      if (len === 0) continue;
      if (off < end) {
        corruptions++;
        messages.push(`${name} at ${off} overlaps ${endName}`);
      }
      if (off + len > end) {
        end = off + len;
        endName = name;
      }
    }
    const size = await this.storage.size();
    if (size > end && !this.pendingLog) {
      leaks = Math.ceil((size - end) / MiB);
      messages.push(`${size - end} bytes past the last block (${end}) are not used`);
      if ((repair === 'leaks' || repair === 'all') && !this.readOnly) {
        await this.lock.run(async () => {
          await this.commit();
          await this.storage.truncate(end);
        });
        this.fileSize = end;
        this.fileEnd = end;
        repaired.leaks = leaks;
        leaks = 0;
      }
    }
    return {
      corruptions,
      leaks,
      repaired: repaired.corruptions || repaired.leaks ? repaired : undefined,
      messages,
      details: { allocatedBlocks: allocated, totalBlocks: g.dataBlocks, blockSize: g.blockSize },
    };
  }

  // ---- info -----------------------------------------------------------------

  subformat(): string {
    return this.md.hasParent ? 'differencing' : this.md.leaveBlockAllocated ? 'fixed' : 'dynamic';
  }

  info(backing?: { name: string; format?: string }): FormatInfo {
    const h = this.header;
    const parent = this.md.parent;
    return {
      format: 'vhdx',
      subformat: this.subformat(),
      granularity: this.md.blockSize,
      backing,
      dirty: !!this.pendingLog,
      details: {
        blockSize: this.md.blockSize,
        logicalSectorSize: this.md.logicalSectorSize,
        physicalSectorSize: this.md.physicalSectorSize,
        virtualDiskId: guidText(this.md.diskId),
        logOffset: h.logOffset,
        logSize: h.logLength,
        logPending: this.pendingLog ? this.pendingLog.entries : 0,
        headerSequence: Number(h.sequence),
        fileWriteGuid: guidText(h.fileWriteGuid),
        dataWriteGuid: guidText(h.dataWriteGuid),
        creator: this.creator,
        ...(parent ? { parentLocator: Object.fromEntries(parent.entries) } : {}),
      },
    };
  }

  features(extra: Partial<DiskFeatures>): DiskFeatures {
    return {
      check: ({ repair }) => this.check(repair),
      repairs: true,
      ...extra,
    };
  }
}

export function isZeroHeaderGuid(h: Header): boolean {
  return isZeroGuid(h.logGuid);
}

export function dataView(buf: Uint8Array): DataView {
  return viewOf(buf);
}
