/**
 * compareDisks(a, b): do two disks read the same? Extent-driven: where both are
 * `zero`/`hole` nothing is read; where one is, only the other is read and
 * checked for zeros. Disks of different sizes compare like qemu-img compare
 * (without -s): the part past the shorter one must read as zeros.
 *
 * Mismatches are reported per 512-byte sector, as qemu-img does: the first one
 * rounded down to its sector, and with `all` every differing range (runs of
 * differing sectors, merged; the last one clipped to the larger size).
 */
import { alignDown, isAllZero } from '../core/bytes.js';
import type { Disk, Extent } from '../core/disk.js';
import { throwIfAborted } from '../core/errors.js';
import { ioBuffer } from './buffers.js';
import type { OpOptions } from './progress.js';

export interface CompareOptions extends OpOptions {
  /** Find every differing range instead of stopping at the first. */
  all?: boolean;
  /** Bytes per read. Default 2 MiB. */
  chunkSize?: number;
  /** Chunks read ahead (each reads A and B). Default 4. */
  readAhead?: number;
}

export interface CompareResult {
  identical: boolean;
  sizeA: number;
  sizeB: number;
  /** First differing byte rounded down to 512. */
  firstMismatch?: number;
  /** With `all`: every differing range (sector granular). */
  ranges?: Array<{ offset: number; length: number }>;
  /** Bytes read from A and B together. */
  bytesRead: number;
}

const MiB = 1 << 20;
const SECTOR = 512;
const WINDOW = 1024 * MiB;

type Seg = { offset: number; length: number; aData: boolean; bData: boolean };

/** Extents of `d` over [start, end), zeros past its end. Only data-or-not matters. */
async function dataMap(d: Disk, start: number, end: number): Promise<Array<{ end: number; data: boolean }>> {
  const out: Array<{ end: number; data: boolean }> = [];
  const inDisk = Math.max(0, Math.min(end, d.size) - start);
  const exts: Extent[] = inDisk > 0 ? await d.extents(start, inDisk) : [];
  for (const e of exts) {
    const data = e.status === 'data';
    const last = out[out.length - 1];
    if (last && last.data === data) last.end = e.offset + e.length;
    else out.push({ end: e.offset + e.length, data });
  }
  if (start + inDisk < end) {
    const last = out[out.length - 1];
    if (last && !last.data) last.end = end;
    else out.push({ end, data: false });
  }
  return out;
}

async function* segments(a: Disk, b: Disk, total: number, chunk: number): AsyncGenerator<Seg> {
  for (let win = 0; win < total; win += WINDOW) {
    const end = Math.min(total, win + WINDOW);
    const [ma, mb] = await Promise.all([dataMap(a, win, end), dataMap(b, win, end)]);
    let i = 0;
    let j = 0;
    for (let pos = win; pos < end; ) {
      while (ma[i].end <= pos) i++;
      while (mb[j].end <= pos) j++;
      const segEnd = Math.min(ma[i].end, mb[j].end);
      const aData = ma[i].data;
      const bData = mb[j].data;
      if (!aData && !bData) yield { offset: pos, length: segEnd - pos, aData, bData };
      else {
        for (let p = pos; p < segEnd; ) {
          const n = Math.min(segEnd, alignDown(p, chunk) + chunk) - p;
          yield { offset: p, length: n, aData, bData };
          p += n;
        }
      }
      pos = segEnd;
    }
  }
}

export async function compareDisks(a: Disk, b: Disk, opts: CompareOptions = {}): Promise<CompareResult> {
  const chunk = Math.max(SECTOR, alignDown(opts.chunkSize ?? 2 * MiB, SECTOR));
  const ahead = Math.max(1, opts.readAhead ?? 4);
  const total = Math.max(a.size, b.size);
  const { signal, onProgress } = opts;
  const phase = 'comparing';
  const result: CompareResult = { identical: true, sizeA: a.size, sizeB: b.size, bytesRead: 0 };
  const ranges: Array<{ offset: number; length: number }> = [];
  let done = 0;
  onProgress?.({ phase, done, total });

  const mark = (offset: number, end: number): void => {
    const s = alignDown(offset, SECTOR);
    const e = Math.min(total, alignDown(end - 1, SECTOR) + SECTOR);
    result.identical = false;
    result.firstMismatch ??= s;
    const last = ranges[ranges.length - 1];
    if (last && last.offset + last.length >= s) last.length = Math.max(last.length, e - last.offset);
    else ranges.push({ offset: s, length: e - s });
  };

  const zeros = new Uint8Array(SECTOR);
  /** Compares one chunk; `undefined` stands for zeros. Returns false to stop (first mismatch, not all). */
  const check = (x: Uint8Array | undefined, y: Uint8Array | undefined, offset: number): boolean => {
    if (!x && !y) return true;
    if (x && y ? Buffer.compare(x, y) === 0 : isAllZero((x ?? y)!)) return true;
    const len = (x ?? y)!.length;
    // Walk the chunk by absolute sectors to find the differing ones.
    for (let i = 0; i < len; ) {
      const next = Math.min(len, alignDown(offset + i, SECTOR) + SECTOR - offset);
      const sx = x ? x.subarray(i, next) : zeros.subarray(0, next - i);
      const sy = y ? y.subarray(i, next) : zeros.subarray(0, next - i);
      if (Buffer.compare(sx, sy) !== 0) {
        mark(offset + i, offset + next);
        if (!opts.all) return false;
      }
      i = next;
    }
    return true;
  };

  type Job = { seg: Seg; read: Promise<[Uint8Array | undefined, Uint8Array | undefined]> };
  const pool: Uint8Array[] = [];
  const take = (n: number): Uint8Array => (pool.pop() ?? ioBuffer(chunk)).subarray(0, n);
  const give = (u: Uint8Array | undefined): void => {
    if (u) pool.push(new Uint8Array(u.buffer, u.byteOffset, chunk));
  };
  const start = (seg: Seg): Job => {
    const readOne = async (d: Disk, isData: boolean): Promise<Uint8Array | undefined> => {
      if (!isData) return undefined;
      const buf = take(seg.length);
      await d.read(buf, seg.offset);
      result.bytesRead += seg.length;
      return buf;
    };
    const read = Promise.all([readOne(a, seg.aData), readOne(b, seg.bData)]);
    read.catch(() => undefined);
    return { seg, read };
  };

  const iter = segments(a, b, total, chunk);
  const queue: Job[] = [];
  const fill = async (): Promise<void> => {
    while (queue.length < ahead) {
      const r = await iter.next();
      if (r.done) return;
      queue.push(start(r.value));
    }
  };
  try {
    await fill();
    while (queue.length) {
      throwIfAborted(signal);
      const job = queue.shift()!;
      const [x, y] = await job.read;
      await fill();
      const go = check(x, y, job.seg.offset);
      give(x);
      give(y);
      done += job.seg.length;
      onProgress?.({ phase, done, total });
      if (!go) break;
    }
  } finally {
    await Promise.allSettled(queue.map((j) => j.read));
    await iter.return(undefined).catch(() => undefined);
  }
  if (opts.all) result.ranges = ranges;
  return result;
}
