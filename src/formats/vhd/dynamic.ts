/**
 * Dynamic (type 3) and differencing (type 4) VHDs: a BAT of u32 sector offsets
 * (0xFFFFFFFF = no block), each block a sector bitmap (padded to 512 bytes)
 * followed by the block's data. A bitmap bit (most significant bit first) says
 * whether the sector is stored here:
 *
 *   BAT entry   bit | extents() | read here
 *   ----------  --- | --------- | ---------------------------------------------
 *   unused       -  | hole      | zeros (type 4: the parent, through the chain)
 *   block        1  | data      | the stored sector
 *   block        0  | hole      | zeros (type 4: the parent)
 *
 * qemu ignores bitmaps and sets every bit of a block it allocates; Hyper-V and
 * libvhdi honour them. platter reads bitmaps per sector, and writes them per
 * 4 KiB (granularity 4096: the chain copies-on-write 8 sectors at a time, so
 * every bitmap byte it writes is 0x00 or 0xFF). Finer bitmaps are valid, but
 * libvhdi (20210425) misreads a partly set byte: it takes every sector after
 * the first set one in that byte as present. The rest of a new block reads as
 * zeros, so qemu, which ignores the bitmap, reads the same bytes.
 *
 * New blocks go where the footer at the end of the file was, and the footer moves
 * behind them. A BAT that must grow and has no room where it is moves to the end.
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
import { assert, corrupt, invalid, PlatterError } from '../../core/errors.js';
import { hostRuns } from '../../core/host-holes.js';
import { Mutex } from '../../core/mutex.js';
import { eachZeroPiece, type Storage, writeSpansTo } from '../../core/storage.js';
import {
  chsSectors,
  DISK_DIFFERENCING,
  DISK_DYNAMIC,
  FOOTER_SIZE,
  type Footer,
  MAX_VHD_SIZE,
  resizedFooter,
  serializeFooter,
  uuidText,
} from './footer.js';
import { batEntries, type DynamicHeader, HEADER_SIZE, type Locator, serializeHeader } from './header.js';

export const UNUSED = 0xffffffff;
const FULL = new Uint8Array(0); // sentinel: every sector of the block is present
/** Bitmaps loaded at once by prefetchBitmaps. */
const PREFETCH = 256;

export interface ParentLink {
  name: string;
  uuid: Uint8Array;
  timestamp: number;
  locators: Array<{ code: number; data: Uint8Array }>;
  unicodeName: string;
}

export interface DynamicOptions {
  storage: Storage;
  footer: Footer;
  header: DynamicHeader;
  bat: Uint32Array;
  /** BAT entries that point past the end of the file: any access to them is a corrupt-image error. */
  bad: Map<number, string>;
  size: number;
  fileSize: number;
  /** Whether the footer at the end of the file is present (else the block area ends at fileSize). */
  tailFooter: boolean;
  readOnly: boolean;
  backing?: { name: string; format?: string };
  /** Reads a VHD's identity, for setBacking: its UUID and timestamp. */
  parentLink?: (name: string) => Promise<ParentLink>;
  checksumOk: boolean;
}

export class DynamicVhd implements DiskImpl {
  size: number;
  readonly granularity: number;
  readonly storages: readonly Storage[];
  readonly features: DiskFeatures;
  private readonly storage: Storage;
  private footer: Footer;
  private header: DynamicHeader;
  private bat: Uint32Array;
  private readonly bs: number;
  private readonly bitmapSize: number;
  private readonly spb: number;
  private nextFree: number;
  private readonly bitmaps = new Map<number, Uint8Array>();
  private readonly loading = new Map<number, Promise<Uint8Array>>();
  private readonly meta = new Mutex();
  /** Blocks placed by allocateSpans whose bitmap and BAT entry are not written yet. */
  private unwritten: number[] = [];
  /** Blocks being allocated: a second writer waits for the first. */
  private readonly pending = new Map<number, Promise<void>>();
  private backing?: { name: string; format?: string };

  constructor(private readonly o: DynamicOptions) {
    this.storage = o.storage;
    this.storages = [o.storage];
    this.footer = o.footer;
    this.header = o.header;
    this.bat = o.bat;
    this.size = o.size;
    this.bs = o.header.blockSize;
    this.spb = this.bs / 512;
    this.granularity = Math.min(4096, this.bs);
    this.bitmapSize = alignUp(Math.ceil(this.spb / 8), 512);
    this.backing = o.backing;
    let end = alignUp(this.header.tableOffset + this.bat.length * 4, 512);
    end = Math.max(end, this.footer.dataOffset + HEADER_SIZE);
    this.bat.forEach((e, b) => {
      if (e !== UNUSED && !o.bad.has(b)) end = Math.max(end, e * 512 + this.bitmapSize + this.bs);
    });
    for (const l of this.header.locators) if (l.code !== 0) end = Math.max(end, l.dataOffset + l.dataLength);
    this.nextFree = alignUp(Math.max(end, o.tailFooter ? o.fileSize - FOOTER_SIZE : o.fileSize), 512);
    const f: DiskFeatures = {
      check: () => this.check(),
      resize: (n, opts) => this.resize(n, opts.shrink),
      makeEmpty: () => this.makeEmpty(),
    };
    if (o.parentLink) f.setBacking = (b) => this.setBacking(b);
    this.features = f;
    if (o.readOnly) {
      this.write = undefined;
      this.writeZeroes = undefined;
    }
  }

  private get name(): string {
    return this.storage.name;
  }

  private blockOffset(b: number): number {
    const why = this.o.bad.get(b);
    if (why) throw corrupt(this.name, why);
    const e = this.bat[b];
    return e === undefined || e === UNUSED ? -1 : e * 512;
  }

  private async bitmap(b: number): Promise<Uint8Array> {
    const cached = this.bitmaps.get(b);
    if (cached) return cached;
    let p = this.loading.get(b);
    if (!p) {
      p = (async () => {
        const buf = new Uint8Array(this.bitmapSize);
        await this.storage.read(buf, this.blockOffset(b));
        const full = this.isFull(buf);
        const bm = full ? FULL : buf;
        this.bitmaps.set(b, bm);
        return bm;
      })();
      this.loading.set(b, p);
      p.finally(() => this.loading.delete(b)).catch(() => undefined);
    }
    return p;
  }

  /**
   * Loads the bitmaps of the allocated blocks in [first, last] that are not
   * cached yet, PREFETCH at a time: one round trip to the thread pool per
   * group instead of one per block (extents and host spans of a large range
   * otherwise wait on each block's 512-byte read in turn).
   */
  private async prefetchBitmaps(first: number, last: number): Promise<void> {
    // The blocks first: a corrupt BAT entry throws before any read starts, not
    // while a group is in flight with nobody left to see it fail.
    const blocks: number[] = [];
    for (let b = first; b <= last; b++) if (this.blockOffset(b) >= 0 && !this.bitmaps.has(b)) blocks.push(b);
    for (let i = 0; i < blocks.length; i += PREFETCH) {
      await Promise.all(blocks.slice(i, i + PREFETCH).map((b) => this.bitmap(b)));
    }
  }

  private isFull(bm: Uint8Array): boolean {
    if (bm === FULL) return true;
    const whole = Math.floor(this.spb / 8);
    for (let i = 0; i < whole; i++) if (bm[i] !== 0xff) return false;
    for (let s = whole * 8; s < this.spb; s++) if (!bit(bm, s)) return false;
    return true;
  }

  // ---- read / extents ----

  async read(buf: Uint8Array, offset: number): Promise<void> {
    await eachBlockPiece(buf, offset, this.bs, (sub, b, within) => this.readPiece(sub, b, within));
  }

  private async readPiece(sub: Uint8Array, b: number, within: number): Promise<void> {
    const at = this.blockOffset(b);
    if (at < 0) {
      sub.fill(0);
      return;
    }
    const [bm] = await Promise.all([this.bitmap(b), this.storage.read(sub, at + this.bitmapSize + within)]);
    if (bm === FULL) return;
    // Sectors not present in this layer read as zeros here.
    for (let s = Math.floor(within / 512); s * 512 < within + sub.length; s++) {
      if (bit(bm, s)) continue;
      const a = Math.max(s * 512, within) - within;
      const e = Math.min((s + 1) * 512, within + sub.length) - within;
      sub.fill(0, a, e);
    }
  }

  /**
   * Reads: allocated blocks whose every sector is present (a full bitmap).
   * Allocate: those in place, and unallocated blocks (whole ones only in a
   * differencing disk) get their place behind the last block at once; their
   * bitmaps (all present), BAT entries and the footer behind them are written
   * at the next flush (allocateMeta), as the caller writes every byte first.
   */
  async hostSpans(offset: number, length: number, purpose: HostSpanPurpose): Promise<HostSpan[] | null> {
    if (purpose === 'allocate') return this.allocateSpans(offset, length);
    if (purpose !== 'read') return null;
    await this.prefetchBitmaps(Math.floor(offset / this.bs), Math.floor((offset + length - 1) / this.bs));
    const spans: HostSpan[] = [];
    for (const p of blockPieces(offset, length, this.bs)) {
      const at = this.blockOffset(p.block);
      if (at < 0 || (await this.bitmap(p.block)) !== FULL) return null;
      const pos = offset + p.at;
      spans.push({
        offset: pos,
        length: p.length,
        storage: this.storage,
        at: at + this.bitmapSize + p.within,
      });
    }
    return spans;
  }

  private async allocateSpans(offset: number, length: number): Promise<HostSpan[] | null> {
    if (!this.write) return null;
    const pieces = [...blockPieces(offset, length, this.bs)];
    let fresh = 0;
    for (const p of pieces) {
      if (this.o.bad.has(p.block) || this.pending.has(p.block)) return null;
      if (this.blockOffset(p.block) >= 0) {
        if ((await this.bitmap(p.block)) !== FULL) return null;
        continue;
      }
      // A differencing disk's unwritten sectors come from its parent: only whole blocks here.
      if (this.footer.diskType !== DISK_DYNAMIC && !coversBlock(p, this.bs, this.size)) return null;
      fresh++;
    }
    const last = alignUp(this.nextFree, 512) + (fresh - 1) * (this.bitmapSize + this.bs);
    if (fresh > 0 && last / 512 >= UNUSED) return null; // write() says why
    const spans: HostSpan[] = [];
    for (const p of pieces) {
      if (this.blockOffset(p.block) < 0) {
        const at = alignUp(this.nextFree, 512);
        this.nextFree = at + this.bitmapSize + this.bs;
        this.bat[p.block] = at / 512;
        this.bitmaps.set(p.block, FULL);
        this.unwritten.push(p.block);
      }
      const at = this.blockOffset(p.block) + this.bitmapSize + p.within;
      spans.push({ offset: offset + p.at, length: p.length, storage: this.storage, at });
    }
    return spans;
  }

  /** Writes what allocateSpans left for later: bitmaps, BAT entries, the footer behind the last block. */
  private async allocateMeta(): Promise<void> {
    if (this.unwritten.length === 0) return;
    const blocks = this.unwritten;
    this.unwritten = [];
    await this.meta.run(async () => {
      // One bitmap of all present sectors, written to every new block at once.
      const full = new Uint8Array(this.bitmapSize).fill(0xff);
      await writeSpansTo(
        this.storage,
        full,
        blocks.map((b) => ({ from: 0, to: this.blockOffset(b), length: full.length })),
      );
      let from = blocks[0];
      let to = blocks[0] + 1;
      for (const b of blocks) {
        from = Math.min(from, b);
        to = Math.max(to, b + 1);
      }
      await this.writeBatEntries(from, to);
      await this.storage.write(serializeFooter(this.footer), this.nextFree);
    });
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    const end = Math.min(offset + length, offset + 4096 * this.bs);
    if (end > offset)
      await this.prefetchBitmaps(Math.floor(offset / this.bs), Math.floor((end - 1) / this.bs));
    for (let pos = offset; pos < end; ) {
      const b = Math.floor(pos / this.bs);
      const within = pos - b * this.bs;
      const n = Math.min(this.bs - within, end - pos);
      if (this.blockOffset(b) < 0) {
        push(out, pos, n, 'hole');
      } else {
        const bm = await this.bitmap(b);
        if (bm === FULL) {
          // Holes of the host file inside the block read as zeros: report them, so copies skip them.
          const at = this.blockOffset(b) + this.bitmapSize + within;
          for (const r of await hostRuns(this.storage, at, n)) push(out, pos + r.offset, r.length, r.status);
        } else {
          for (let p = within; p < within + n; ) {
            const s = Math.floor(p / 512);
            const e = Math.min((s + 1) * 512, within + n);
            push(out, b * this.bs + p, e - p, bit(bm, s) ? 'data' : 'hole');
            p = e;
          }
        }
      }
      pos += n;
    }
    return out;
  }

  // ---- write ----

  write? = async (buf: Uint8Array, offset: number): Promise<void> => {
    await eachBlockPiece(buf, offset, this.bs, (piece, b, within) => this.writePiece(piece, b, within));
  };

  private async writePiece(piece: Uint8Array, b: number, within: number): Promise<void> {
    for (let p = this.pending.get(b); p; p = this.pending.get(b)) await p.catch(() => undefined);
    const allocated = this.blockOffset(b) >= 0;
    const bm = allocated ? await this.bitmap(b) : undefined;
    const end = within + piece.length;
    // A partly written unit not yet wholly present is completed with what it reads now
    // (the chain normally sends whole units), so bitmap bytes stay all-or-nothing.
    const u = this.granularity;
    const ua = Math.floor(within / u) * u;
    const ue = Math.min(alignUp(end, u), this.bs);
    const a = ua < within && !present(bm, ua, within) ? ua : within;
    const e = end < ue && !present(bm, end, ue) ? ue : end;
    let data = piece;
    if (a !== within || e !== end) {
      data = new Uint8Array(e - a);
      if (allocated) await this.readPiece(data, b, a);
      data.set(piece, within - a);
    }
    const s0 = Math.floor(a / 512);
    const s1 = Math.ceil(e / 512);
    // Nothing awaited since the pending check when unallocated: allocate() claims the block at once.
    if (!allocated) return this.allocate(b, data, a, s0, s1);
    await this.writeExisting(b, data, a, s0, s1);
  }

  private async writeExisting(b: number, data: Uint8Array, a: number, s0: number, s1: number): Promise<void> {
    await this.storage.write(data, this.blockOffset(b) + this.bitmapSize + a);
    const bm = await this.bitmap(b);
    if (bm === FULL) return;
    let missing = false;
    for (let s = s0; s < s1 && !missing; s++) missing = !bit(bm, s);
    if (!missing) return;
    const mark = async (): Promise<void> => {
      for (let s = s0; s < s1; s++) bm[s >> 3] |= 0x80 >> (s & 7);
      const first = Math.floor((s0 >> 3) / 512) * 512;
      const last = alignUp(((s1 - 1) >> 3) + 1, 512);
      await this.storage.write(bm.subarray(first, last), this.blockOffset(b) + first);
      if (this.isFull(bm)) this.bitmaps.set(b, FULL);
    };
    await this.meta.run(mark);
  }

  /**
   * The block's place is taken at once and its data written in parallel with
   * other allocations; its bitmap, the footer behind the last block and the BAT
   * entry are written under the metadata lock. A footer written at the end
   * before this block was placed lies where this block's bitmap goes, and that
   * bitmap is written later, under the lock, so it wins.
   */
  private allocate(b: number, data: Uint8Array, a: number, s0: number, s1: number): Promise<void> {
    const at = alignUp(this.nextFree, 512);
    if (at / 512 >= UNUSED) {
      return Promise.reject(
        new PlatterError('ENOSPC', `${this.name}: VHD file would exceed 2 TiB of sectors`),
      );
    }
    this.nextFree = at + this.bitmapSize + this.bs;
    const bm = new Uint8Array(this.bitmapSize);
    // Type 3 has nothing below, and the rest of a new block reads as zeros: mark it all
    // present, as qemu does, which saves a bitmap write per later piece of the block.
    if (this.footer.diskType === DISK_DYNAMIC) bm.fill(0xff);
    else for (let s = s0; s < s1; s++) bm[s >> 3] |= 0x80 >> (s & 7);
    const p = (async () => {
      // The rest of the block lies past the old end of file and reads as zeros.
      await this.storage.write(data, at + this.bitmapSize + a);
      await this.meta.run(async () => {
        await this.storage.write(bm, at);
        await this.storage.write(serializeFooter(this.footer), this.nextFree);
        this.bat[b] = at / 512;
        await this.writeBatEntries(b, b + 1);
        this.bitmaps.set(b, this.isFull(bm) ? FULL : bm);
      });
    })();
    this.pending.set(b, p);
    p.finally(() => this.pending.delete(b)).catch(() => undefined);
    return p;
  }

  private async writeBatEntries(from: number, to: number): Promise<void> {
    const a = Math.floor((from * 4) / 512) * 512;
    const e = Math.min(alignUp(to * 4, 512), this.bat.length * 4);
    const buf = new Uint8Array(e - a);
    const v = viewOf(buf);
    for (let i = 0; i < buf.length / 4; i++) v.setUint32(i * 4, this.bat[a / 4 + i], false);
    await this.storage.write(buf, this.header.tableOffset + a);
  }

  writeZeroes? = async (offset: number, length: number): Promise<void> => {
    // Type 3: sectors not present already read as zeros (nothing below); type 4 must store zeros.
    await eachZeroPiece(length, async (zeros, rel) => {
      const pos = offset + rel;
      if (this.footer.diskType !== DISK_DYNAMIC) return this.write!(zeros, pos);
      for (const e of await this.extents(pos, zeros.length)) {
        if (e.status === 'data') await this.write!(zeros.subarray(0, e.length), e.offset);
      }
    });
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
    const f = this.footer;
    let allocated = 0;
    for (const e of this.bat) if (e !== UNUSED) allocated++;
    return {
      format: 'vhd',
      subformat: f.diskType === DISK_DIFFERENCING ? 'differencing' : 'dynamic',
      granularity: this.bs,
      backing: this.backing,
      corrupt: this.o.bad.size > 0 || !this.o.checksumOk,
      details: {
        creatorApplication: f.creatorApp.replace(/\0/g, ''),
        currentSize: f.currentSize,
        geometry: f.geometry,
        uuid: uuidText(f.uuid),
        parentUuid: f.diskType === DISK_DIFFERENCING ? uuidText(this.header.parentUuid) : undefined,
        parentName: f.diskType === DISK_DIFFERENCING ? this.header.parentName : undefined,
        blocks: this.bat.length,
        allocatedBlocks: allocated,
        checksumValid: this.o.checksumOk,
      },
    };
  }

  // ---- metadata rewrites ----

  private async writeHeaderAndFooters(): Promise<void> {
    await this.storage.write(serializeHeader(this.header), this.footer.dataOffset);
    const foot = serializeFooter(this.footer);
    await this.storage.write(foot, 0);
    await this.storage.write(foot, this.nextFree);
    await this.storage.truncate(this.nextFree + FOOTER_SIZE);
  }

  /** Start of the first structure after `from` (BAT growth room). */
  private nextStructureAfter(from: number): number {
    let next = this.nextFree;
    for (const e of this.bat) if (e !== UNUSED && e * 512 >= from) next = Math.min(next, e * 512);
    for (const l of this.header.locators) {
      if (l.code !== 0 && l.dataOffset >= from) next = Math.min(next, l.dataOffset);
    }
    if (this.footer.dataOffset >= from) next = Math.min(next, this.footer.dataOffset);
    return next;
  }

  private async resize(newSize: number, shrink: boolean): Promise<void> {
    if (!this.write) throw new PlatterError('EREADONLY', `${this.name}: image is open read-only`);
    checkNewSize(this.name, newSize);
    await this.meta.run(async () => {
      if (newSize < this.size) {
        if (!shrink)
          throw invalid(`${this.name}: shrinking needs --shrink (from ${this.size} to ${newSize})`);
        await requireZeroTail(this.name, this, newSize, this.size);
        const keep = Math.ceil(newSize / this.bs);
        for (let b = keep; b < this.bat.length; b++) this.bat[b] = UNUSED;
        if (keep < this.bat.length) await this.writeBatEntries(keep, this.bat.length);
        const b = Math.floor(newSize / this.bs);
        const bm = newSize % this.bs !== 0 && this.blockOffset(b) >= 0 ? await this.bitmap(b) : undefined;
        if (bm) {
          const own = bm === FULL ? new Uint8Array(this.bitmapSize).fill(0xff) : bm;
          for (let s = (newSize - b * this.bs) / 512; s < this.spb; s++) own[s >> 3] &= ~(0x80 >> (s & 7));
          await this.storage.write(own, this.blockOffset(b));
          this.bitmaps.set(b, own);
        }
      } else {
        const need = batEntries(this.name, newSize, this.bs);
        if (need > this.bat.length) {
          const grown = new Uint32Array(need).fill(UNUSED);
          grown.set(this.bat);
          const room = this.nextStructureAfter(this.header.tableOffset + 1) - this.header.tableOffset;
          this.bat = grown;
          if (need * 4 > room) {
            // No room in place: the BAT moves to the end of the file.
            this.header.tableOffset = alignUp(this.nextFree, 512);
            this.nextFree = this.header.tableOffset + alignUp(need * 4, 512);
          }
          await this.writeBatEntries(0, need);
          this.header.maxTableEntries = need;
        }
      }
      this.size = newSize;
      this.footer = resizedFooter(this.footer, newSize);
      await this.writeHeaderAndFooters();
    });
  }

  private async makeEmpty(): Promise<void> {
    if (!this.write) throw new PlatterError('EREADONLY', `${this.name}: image is open read-only`);
    await this.meta.run(async () => {
      this.bat.fill(UNUSED);
      this.o.bad.clear();
      await this.writeBatEntries(0, this.bat.length);
      this.bitmaps.clear();
      let end = Math.max(
        alignUp(this.header.tableOffset + this.bat.length * 4, 512),
        this.footer.dataOffset + HEADER_SIZE,
      );
      for (const l of this.header.locators)
        if (l.code !== 0) end = Math.max(end, l.dataOffset + l.dataLength);
      this.nextFree = alignUp(end, 512);
      await this.writeHeaderAndFooters();
    });
  }

  private async setBacking(b: { name: string; format?: string } | null): Promise<void> {
    if (!this.write) throw new PlatterError('EREADONLY', `${this.name}: image is open read-only`);
    if (b?.format && b.format !== 'vhd') {
      throw new PlatterError(
        'EUNSUPPORTED',
        `${this.name}: a differencing VHD needs a VHD parent, not ${b.format}`,
      );
    }
    const link = b ? await this.o.parentLink!(b.name) : undefined;
    await this.meta.run(async () => {
      const locators: Locator[] = this.header.locators.map(() => ({
        code: 0,
        dataSpace: 0,
        dataLength: 0,
        dataOffset: 0,
      }));
      if (link) {
        // Locator data goes to the end of the file; the old locator space is left unused.
        let at = alignUp(this.nextFree, 512);
        for (const [i, l] of link.locators.entries()) {
          const space = alignUp(Math.max(l.data.length, 1), 512);
          const padded = new Uint8Array(space);
          padded.set(l.data);
          await this.storage.write(padded, at);
          locators[i] = { code: l.code, dataSpace: space, dataLength: l.data.length, dataOffset: at };
          at += space;
        }
        this.nextFree = at;
        this.header.parentUuid = link.uuid;
        this.header.parentTimestamp = link.timestamp;
        this.header.parentName = link.unicodeName;
        this.footer = { ...this.footer, diskType: DISK_DIFFERENCING };
      } else {
        this.header.parentUuid = new Uint8Array(16);
        this.header.parentTimestamp = 0;
        this.header.parentName = '';
        this.footer = { ...this.footer, diskType: DISK_DYNAMIC };
      }
      this.header.locators = locators;
      this.backing = b ? { name: b.name, format: 'vhd' } : undefined;
      await this.writeHeaderAndFooters();
    });
  }

  // ---- check ----

  async check(): Promise<CheckResult> {
    const messages: string[] = [];
    const fileSize = await this.storage.size();
    const metaEnd = alignUp(this.header.tableOffset + this.bat.length * 4, 512);
    const ranges: Array<[number, number, string]> = [
      [0, FOOTER_SIZE, 'footer copy'],
      [this.footer.dataOffset, this.footer.dataOffset + HEADER_SIZE, 'dynamic header'],
      [this.header.tableOffset, metaEnd, 'BAT'],
    ];
    for (const [i, l] of this.header.locators.entries()) {
      if (l.code !== 0 && l.dataLength > 0)
        ranges.push([l.dataOffset, l.dataOffset + l.dataLength, `parent locator ${i}`]);
    }
    let allocated = 0;
    let corruptions = 0;
    const blocks: Array<[number, number, number]> = [];
    for (let b = 0; b < this.bat.length; b++) {
      const e = this.bat[b];
      if (e === UNUSED) continue;
      allocated++;
      const start = e * 512;
      const end = start + this.bitmapSize + this.bs;
      if (end > fileSize) {
        corruptions++;
        messages.push(`BAT entry ${b} (sector ${e}) ends at ${end}, past the end of file (size ${fileSize})`);
        continue;
      }
      for (const [a, z, what] of ranges) {
        if (start < z && a < end) {
          corruptions++;
          messages.push(`BAT entry ${b} (offset ${start}) overlaps the ${what} at ${a}`);
        }
      }
      blocks.push([start, end, b]);
    }
    blocks.sort((x, y) => x[0] - y[0]);
    for (let i = 1; i < blocks.length; i++) {
      if (blocks[i][0] < blocks[i - 1][1]) {
        corruptions++;
        messages.push(
          `BAT entries ${blocks[i - 1][2]} and ${blocks[i][2]} overlap (offsets ${blocks[i - 1][0]} and ${blocks[i][0]})`,
        );
      }
    }
    if (!this.o.checksumOk) {
      corruptions++;
      messages.push('footer or dynamic header checksum does not match (opened with force=on)');
    }
    if (chsSectors(this.footer.geometry) * 512 > this.footer.currentSize && this.footer.currentSize > 0) {
      messages.push(`note: CHS geometry covers more than the current size ${this.footer.currentSize}`);
    }
    return {
      corruptions,
      leaks: 0,
      messages,
      details: { blocks: this.bat.length, allocatedBlocks: allocated, blockSize: this.bs },
    };
  }
}

/** Are all sectors of [a, e) (bytes within a block) present? */
function present(bm: Uint8Array | undefined, a: number, e: number): boolean {
  if (!bm) return false;
  if (bm === FULL) return true;
  for (let s = Math.floor(a / 512); s * 512 < e; s++) if (!bit(bm, s)) return false;
  return true;
}

function bit(bm: Uint8Array, s: number): boolean {
  return (bm[s >> 3] & (0x80 >> (s & 7))) !== 0;
}

function push(out: Extent[], offset: number, length: number, status: Extent['status']): void {
  const last = out[out.length - 1];
  if (last && last.status === status && last.offset + last.length === offset) last.length += length;
  else out.push({ offset, length, status, depth: 0 });
}

export function checkNewSize(name: string, size: number): void {
  if (size % 512 !== 0) throw invalid(`${name}: a VHD size must be a multiple of 512 bytes (got ${size})`);
  if (size <= 0 || size > MAX_VHD_SIZE) {
    throw invalid(`${name}: a VHD size must be between 512 bytes and 2040 GiB (got ${size})`);
  }
}

/** Shrinking is allowed only when [from, to) holds no non-zero data in this layer. */
export async function requireZeroTail(name: string, disk: DiskImpl, from: number, to: number): Promise<void> {
  const exts = disk.extents
    ? await collect(disk, from, to)
    : [{ offset: from, length: to - from, status: 'data' }];
  for (const e of exts) {
    if (e.status !== 'data') continue;
    const chunk = new Uint8Array(Math.min(e.length, 1 << 20));
    for (let p = e.offset; p < e.offset + e.length; p += chunk.length) {
      const n = Math.min(chunk.length, e.offset + e.length - p);
      const view = chunk.subarray(0, n);
      await disk.read(view, p);
      if (!isAllZero(view)) {
        throw invalid(
          `${name}: cannot shrink to ${from}: the part being cut off holds data (at offset ${p})`,
        );
      }
    }
  }
}

async function collect(disk: DiskImpl, from: number, to: number): Promise<Extent[]> {
  const out: Extent[] = [];
  for (let p = from; p < to; ) {
    const got = await disk.extents!(p, to - p);
    assert(got.length > 0, 'extents returned nothing');
    for (const e of got) {
      const len = Math.min(e.length, to - p);
      if (len <= 0) break;
      out.push({ ...e, offset: p, length: len });
      p += len;
    }
  }
  return out;
}
