/**
 * The extent table: one Disk over the extents a descriptor lists, in order.
 * Each extent answers for its own byte range [start, start+size); this layer
 * finds the extents a request touches and translates offsets.
 */
import { type Extent, pushExtent } from '../../core/disk.js';
import { PlatterError } from '../../core/errors.js';
import { eachZeroPiece, type Storage } from '../../core/storage.js';

/** What every kind of extent (sparse, flat, zero) gives the table. */
export interface VmdkExtent {
  /** Virtual bytes this extent holds. */
  readonly size: number;
  /** Grain size for sparse extents; flat and zero extents say 512. */
  readonly granularity: number;
  readonly storage?: Storage;
  read(buf: Uint8Array, offset: number): Promise<void>;
  /** Absent: the extent cannot be written (ZERO, RDONLY, opened read-only). */
  write?(buf: Uint8Array, offset: number): Promise<void>;
  writeZeroes?(offset: number, length: number, mayUnmap: boolean): Promise<void>;
  /** May make the range read as zeros or as the parent (whole grains only). */
  discard?(offset: number, length: number): Promise<void>;
  /** Extents relative to this extent, starting exactly at `offset`; may cover less. */
  extents(offset: number, length: number): Promise<Extent[]>;
  flush(): Promise<void>;
  close(): Promise<void>;
}

export interface Placed {
  start: number;
  extent: VmdkExtent;
  /** For messages: "disk-s002.vmdk". */
  name: string;
}

export class ExtentTable {
  readonly size: number;
  constructor(readonly placed: Placed[]) {
    this.size = placed.reduce((n, p) => n + p.extent.size, 0);
  }

  /** Index of the extent holding byte `offset` (offset < size). */
  private find(offset: number): number {
    let lo = 0;
    let hi = this.placed.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.placed[mid].start <= offset) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Calls fn for each piece of [offset, offset+length) with the extent and its relative offset. */
  private async each(
    offset: number,
    length: number,
    fn: (p: Placed, rel: number, n: number, done: number) => Promise<void>,
  ): Promise<void> {
    const jobs: Promise<void>[] = [];
    let done = 0;
    let i = this.find(offset);
    while (done < length) {
      const p = this.placed[i];
      const rel = offset + done - p.start;
      const n = Math.min(p.extent.size - rel, length - done);
      jobs.push(fn(p, rel, n, done));
      done += n;
      i++;
    }
    await Promise.all(jobs);
  }

  read(buf: Uint8Array, offset: number): Promise<void> {
    return this.each(offset, buf.length, (p, rel, n, done) =>
      p.extent.read(buf.subarray(done, done + n), rel),
    );
  }

  write(buf: Uint8Array, offset: number): Promise<void> {
    return this.each(offset, buf.length, (p, rel, n, done) => {
      if (!p.extent.write) throw new PlatterError('EREADONLY', `${p.name}: this extent cannot be written`);
      return p.extent.write(buf.subarray(done, done + n), rel);
    });
  }

  writeZeroes(offset: number, length: number, mayUnmap: boolean): Promise<void> {
    return this.each(offset, length, async (p, rel, n) => {
      if (p.extent.writeZeroes) return p.extent.writeZeroes(rel, n, mayUnmap);
      const extent = p.extent;
      if (!extent.write) throw new PlatterError('EREADONLY', `${p.name}: this extent cannot be written`);
      await eachZeroPiece(n, (zeros, d) => extent.write!(zeros, rel + d));
    });
  }

  discard(offset: number, length: number): Promise<void> {
    return this.each(offset, length, async (p, rel, n) => {
      if (p.extent.write && p.extent.discard) await p.extent.discard(rel, n);
    });
  }

  async extents(offset: number, length: number): Promise<Extent[]> {
    const p = this.placed[this.find(offset)];
    const rel = offset - p.start;
    const n = Math.min(p.extent.size - rel, length);
    const out: Extent[] = [];
    for (const e of await p.extent.extents(rel, n)) {
      pushExtent(out, { offset: e.offset + p.start, length: e.length, status: e.status, depth: 0 });
    }
    return out;
  }

  async flush(): Promise<void> {
    await Promise.all(this.placed.map((p) => p.extent.flush()));
  }

  async close(): Promise<void> {
    let first: unknown;
    for (const p of this.placed) {
      try {
        await p.extent.close();
      } catch (e) {
        first ??= e;
      }
    }
    if (first) throw first;
  }
}
