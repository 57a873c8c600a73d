/**
 * copyDisk's host copies (ops/host-copy.ts): data that both disks keep
 * verbatim in host stores goes store to store through the destination's
 * copier; the rest takes the read/write path. Here the stores are in memory and
 * the copier is a JavaScript one with the native copier's contract.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type Disk, type Extent, type HostSpan, toDisk } from '../../src/core/disk.js';
import {
  type CopySpan,
  type DataRun,
  SCAN_PIECE,
  type SpanCopier,
  type SpanReader,
  type Storage,
  type StoreRange,
} from '../../src/core/storage.js';
import { copyDisk } from '../../src/ops/copy.js';
import { HOST_BATCH, SCAN_BUFFER, SCAN_ZERO_BATCH } from '../../src/ops/host-copy.js';
import { memoryStorage } from '../../src/storage/memory.js';

const K = 1024;

type Piece = { status: 'data' | 'zero' | 'hole'; length: number; opaque: boolean };

interface Source {
  disk: Disk;
  bytes: Uint8Array;
  storage: Storage;
  /** [offset, length] of reads through Disk.read. */
  reads: Array<[number, number]>;
  /** The span lists handed to the store's reader. */
  scans: CopySpan[][];
  /** Ranges whose hostSpans answer null (compressed clusters, say). */
  opaque: Array<[number, number]>;
  /** The data extents, adjacent pieces merged. */
  data: Array<[number, number]>;
}

/** A disk laid out by `pieces`, its data kept verbatim in a memory store. */
function source(pieces: Piece[], zeroRuns: Array<[number, number]>): Source {
  const size = pieces.reduce((s, p) => s + p.length, 0);
  const bytes = new Uint8Array(size);
  const extents: Extent[] = [];
  const opaque: Array<[number, number]> = [];
  const data: Array<[number, number]> = [];
  let pos = 0;
  for (const p of pieces) {
    if (p.status === 'data') {
      bytes.set(randomBytes(p.length), pos);
      // Adjacent data pieces are one extent to the engine.
      const last = data[data.length - 1];
      if (last && last[0] + last[1] === pos) last[1] += p.length;
      else data.push([pos, p.length]);
      if (p.opaque) opaque.push([pos, p.length]);
    }
    extents.push({ offset: pos, length: p.length, status: p.status, depth: 0 });
    pos += p.length;
  }
  // Zeros inside data too (zero detection skips them on either path).
  for (const [o, l] of zeroRuns) {
    for (const [a, n] of data) {
      const from = Math.max(a, o);
      const to = Math.min(a + n, o + l);
      if (from < to) bytes.fill(0, from, to);
    }
  }
  const storage: Storage = memoryStorage('src-store', bytes);
  const scans: CopySpan[][] = [];
  // The native reader's contract in JavaScript: pieces packed into buf (an all-zero
  // piece leaves its room to the next), non-zero runs per zeroBlock, a stop where buf is full.
  const readSpans: SpanReader = async (buf, spans, zeroBlock) => {
    scans.push(spans.map((s) => ({ ...s })));
    const runs: DataRun[] = [];
    let at = 0;
    let consumed = 0;
    for (const s of spans) {
      for (let done = 0; done < s.length; ) {
        const n = Math.min(SCAN_PIECE, s.length - done);
        if (at + n > buf.length) return { runs, consumed };
        await storage.read(buf.subarray(at, at + n), s.from + done);
        let kept = false;
        for (let p = 0; p < n; ) {
          const to = s.to + done + p;
          const q = Math.min(n, (Math.floor(to / zeroBlock) + 1) * zeroBlock - (s.to + done));
          if (buf.subarray(at + p, at + q).some((b) => b !== 0)) {
            kept = true;
            const last = runs[runs.length - 1];
            if (last && last.to + last.length === to && last.at + last.length === at + p)
              last.length += q - p;
            else runs.push({ to, length: q - p, at: at + p });
          }
          p = q;
        }
        done += n;
        consumed += n;
        if (kept) at += n;
      }
    }
    return { runs, consumed };
  };
  storage.readSpans = readSpans;
  const reads: Array<[number, number]> = [];
  const overlaps = (o: number, l: number, [a, n]: [number, number]) => o < a + n && a < o + l;
  const disk = toDisk(
    {
      size,
      async read(buf, offset) {
        reads.push([offset, buf.length]);
        buf.set(bytes.subarray(offset, offset + buf.length));
      },
      async extents(offset, length) {
        return extents
          .filter((e) => e.offset + e.length > offset && e.offset < offset + length)
          .map((e) => {
            const a = Math.max(e.offset, offset);
            return { ...e, offset: a, length: Math.min(e.offset + e.length, offset + length) - a };
          });
      },
      async hostSpans(offset, length): Promise<HostSpan[] | null> {
        if (opaque.some((r) => overlaps(offset, length, r))) return null;
        // Cut at 100 KiB marks: a disk may answer in several spans.
        const out: HostSpan[] = [];
        for (let p = offset; p < offset + length; ) {
          const q = Math.min(offset + length, (Math.floor(p / (100 * K)) + 1) * 100 * K);
          out.push({ offset: p, length: q - p, storage, at: p });
          p = q;
        }
        return out;
      },
    },
    { name: 'src', readOnly: true },
  );
  return { disk, bytes, storage, reads, scans, opaque, data };
}

interface Destination {
  disk: Disk;
  bytes(): Uint8Array;
  copies: CopySpan[][];
  writes: Array<[number, number]>;
}

/**
 * `store` with a copier from `from` in JavaScript, the native copier's contract:
 * blocks of zeroBlock (absolute on the destination) that are all zero are not
 * written, and their runs are reported (adjacent ones merged).
 */
function withJsCopier(store: Storage, from: Storage, onCopy?: (spans: readonly CopySpan[]) => void): Storage {
  const copier: SpanCopier = async (spans, zeroBlock) => {
    onCopy?.(spans);
    let written = 0;
    let skipped = 0;
    const zeroRuns: StoreRange[] = [];
    for (const s of spans) {
      const buf = new Uint8Array(s.length);
      await from.read(buf, s.from);
      for (let p = 0; p < s.length; ) {
        const q = Math.min(s.length, (Math.floor((s.to + p) / zeroBlock) + 1) * zeroBlock - s.to);
        if (buf.subarray(p, q).some((b) => b !== 0)) {
          await store.write(buf.subarray(p, q), s.to + p);
          written += q - p;
        } else {
          skipped += q - p;
          const last = zeroRuns.at(-1);
          if (last && last.offset + last.length === s.to + p) last.length += q - p;
          else zeroRuns.push({ offset: s.to + p, length: q - p });
        }
        p = q;
      }
    }
    return { written, skipped, zeroRuns };
  };
  return Object.assign(store, { copierFrom: (src: Storage) => (src === from ? copier : undefined) });
}

/** A raw-like destination in memory whose store copies from `from` (JS, the native copier's contract). */
function destination(size: number, from: Storage, offsetOnHost = 0, allocates = false): Destination {
  const store = memoryStorage('dst-store');
  const copies: CopySpan[][] = [];
  const writes: Array<[number, number]> = [];
  const withCopier = withJsCopier(store, from, (spans) => copies.push(spans.map((s) => ({ ...s }))));
  const disk = toDisk(
    {
      size,
      async read(buf, offset) {
        buf.fill(0);
        const have = Math.max(0, Math.min(buf.length, (await store.size()) - offsetOnHost - offset));
        if (have > 0) await store.read(buf.subarray(0, have), offsetOnHost + offset);
      },
      async write(buf, offset) {
        writes.push([offset, buf.length]);
        await store.write(buf, offsetOnHost + offset);
      },
      async hostSpans(offset, length) {
        // An image format allocates as it writes: it cannot say in advance.
        if (allocates) return null;
        return [{ offset, length, storage: withCopier, at: offsetOnHost + offset }];
      },
    },
    { name: 'dst', readOnly: false },
  );
  const bytes = () => {
    const out = new Uint8Array(size);
    const all = store.bytes();
    out.set(all.subarray(offsetOnHost, Math.min(all.length, offsetOnHost + size)));
    return out;
  };
  return { disk, bytes, copies, writes };
}

interface Allocating {
  disk: Disk;
  bytes(): Promise<Uint8Array>;
  /** Units mapped now. */
  mapped(): number[];
  /** Bytes of space handed out over the whole copy (allocations, not counting reuse twice). */
  allocated: number;
  /** Ranges given back through writeZeroes. */
  givenBack: Array<[number, number]>;
  /** Units allocated, in order, and whether something had been given back by then. */
  allocations: Array<{ unit: number; afterGiveBack: boolean }>;
}

/**
 * An image-like destination of 64 KiB units: hostSpans 'allocate' maps whole
 * unmapped units to store space at once (like a qcow2 cluster), write() maps
 * what it writes, writeZeroes({mayUnmap}) unmaps whole units and frees their
 * space. Free space keeps its old bytes (as a freed qcow2 metadata cluster
 * does): `stale` units of garbage are free from the start, and space is reused
 * before the store grows, so a zero block the engine neither wrote nor gave
 * back reads as garbage.
 */
function allocatingDestination(size: number, from: Storage, stale: number): Allocating {
  const unit = 64 * K;
  // The garbage in the free space.
  const store = memoryStorage(
    'dst-store',
    randomBytes(stale * unit).map((b) => b | 1),
  );
  const free: number[] = [];
  for (let i = 0; i < stale; i++) free.push(i * unit);
  let top = stale * unit;
  const map = new Map<number, number>();
  const self: Allocating = {
    disk: undefined as unknown as Disk,
    bytes: async () => readAll(self.disk),
    mapped: () => [...map.keys()].sort((a, b) => a - b),
    allocated: 0,
    givenBack: [],
    allocations: [],
  };
  const take = (u: number): number => {
    let at = free.pop();
    if (at === undefined) {
      at = top;
      top += unit;
    }
    map.set(u, at);
    self.allocated += unit;
    self.allocations.push({ unit: u, afterGiveBack: self.givenBack.length > 0 });
    return at;
  };
  const withCopier = withJsCopier(store, from);
  const spansOf = (offset: number, length: number): HostSpan[] => {
    const out: HostSpan[] = [];
    for (let p = offset; p < offset + length; ) {
      const u = Math.floor(p / unit);
      const q = Math.min(offset + length, (u + 1) * unit);
      out.push({ offset: p, length: q - p, storage: withCopier, at: map.get(u)! + (p - u * unit) });
      p = q;
    }
    return out;
  };
  const units = (offset: number, length: number): number[] => {
    const out: number[] = [];
    for (let u = Math.floor(offset / unit); u * unit < offset + length; u++) out.push(u);
    return out;
  };
  self.disk = toDisk(
    {
      size,
      granularity: unit,
      async read(buf, offset) {
        buf.fill(0);
        for (const sp of units(offset, buf.length).flatMap((u) => {
          const a = Math.max(offset, u * unit);
          const b = Math.min(offset + buf.length, (u + 1) * unit);
          return map.has(u) ? spansOf(a, b - a) : [];
        }))
          await store.read(buf.subarray(sp.offset - offset, sp.offset - offset + sp.length), sp.at);
      },
      async write(buf, offset) {
        for (const u of units(offset, buf.length)) {
          if (map.has(u)) continue;
          // A partial write into a new unit: the rest of it reads zeros.
          await store.write(new Uint8Array(unit), take(u));
        }
        for (const sp of spansOf(offset, buf.length))
          await store.write(buf.subarray(sp.offset - offset, sp.offset - offset + sp.length), sp.at);
      },
      async writeZeroes(offset, length) {
        self.givenBack.push([offset, length]);
        for (const u of units(offset, length)) {
          const a = Math.max(offset, u * unit);
          const b = Math.min(offset + length, (u + 1) * unit);
          if (!map.has(u)) continue;
          // Whole units (the disk's last one may be short) are unmapped.
          if (a === u * unit && (b - a === unit || b === size)) {
            free.push(map.get(u)!);
            map.delete(u);
          } else await store.write(new Uint8Array(b - a), map.get(u)! + (a - u * unit));
        }
      },
      async hostSpans(offset, length, purpose) {
        const us = units(offset, length);
        if (purpose !== 'allocate') return us.every((u) => map.has(u)) ? spansOf(offset, length) : null;
        if (offset % unit !== 0 || ((offset + length) % unit !== 0 && offset + length !== size)) return null;
        if (us.some((u) => map.has(u))) return null;
        for (const u of us) take(u);
        return spansOf(offset, length);
      },
    },
    { name: 'dst', readOnly: false },
  );
  return self;
}

async function readAll(d: Disk): Promise<Uint8Array> {
  const out = new Uint8Array(d.size);
  await d.read(out, 0);
  return out;
}

/** Data extents cut where the engine plans them: at multiples of SCAN_BUFFER. */
function planned(data: Array<[number, number]>): Array<[number, number]> {
  const out: Array<[number, number]> = [];
  for (const [a, n] of data) {
    for (let p = a; p < a + n; ) {
      const q = Math.min(a + n, (Math.floor(p / SCAN_BUFFER) + 1) * SCAN_BUFFER);
      out.push([p, q - p]);
      p = q;
    }
  }
  return out;
}

/** Bytes covered by a set of [start, end) intervals. */
function unionLength(iv: Array<[number, number]>): number {
  let total = 0;
  let reach = -1;
  for (const [a, b] of [...iv].sort((x, y) => x[0] - y[0])) {
    if (b <= reach) continue;
    total += b - Math.max(a, reach);
    reach = b;
  }
  return total;
}

const piece = fc.record({
  status: fc.constantFrom<Piece['status']>('data', 'data', 'zero', 'hole'),
  length: fc.integer({ min: 1, max: 700 * K }),
  opaque: fc.boolean(),
});

describe('copyDisk: host copies', () => {
  it('random layouts: the result is the source; only opaque data is read, the rest goes through the copier', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(piece, { minLength: 1, maxLength: 12 }),
        fc.array(fc.tuple(fc.nat({ max: 4000 * K }), fc.integer({ min: 1, max: 200 * K })), { maxLength: 4 }),
        fc.constantFrom(4096, 64 * K, 1000 * K),
        fc.nat({ max: 3 * K }),
        async (pieces, zeroRuns, chunkSize, hostShift) => {
          const src = source(pieces, zeroRuns);
          const dst = destination(src.disk.size, src.storage, hostShift * 512);
          const r = await copyDisk(src.disk, dst.disk, { dstZeroed: true, chunkSize });
          assert.ok(Buffer.from(dst.bytes()).equals(Buffer.from(src.bytes)), 'the copy is the source');
          const dataBytes = src.data.reduce((s, [, n]) => s + n, 0);
          assert.equal(r.bytesRead, dataBytes, 'every data byte counted once, on either path');
          const inside = (o: number, l: number, rs: Array<[number, number]>) =>
            rs.some(([a, n]) => o >= a && o + l <= a + n);
          // The engine asks where data is a SCAN_BUFFER-aligned piece at a time: a piece with an
          // opaque part is read whole, the others are copied.
          const overlaps = ([o, l]: [number, number], [a, n]: [number, number]) => o < a + n && a < o + l;
          const tainted = planned(src.data).filter((d) => src.opaque.some((o) => overlaps(d, o)));
          for (const [o, l] of src.reads)
            assert.ok(inside(o, l, tainted), `read ${o}+${l} is of opaque extents`);
          const viaReads = src.reads.reduce((s, [, n]) => s + n, 0);
          const viaCopier = dst.copies.flat().reduce((s, c) => s + c.length, 0);
          assert.equal(viaReads + viaCopier, dataBytes, 'each data byte went one way');
          assert.equal(
            viaReads,
            tainted.reduce((s, [, n]) => s + n, 0),
            'only extents with opaque data take the read path',
          );
          for (const batch of dst.copies) {
            for (const c of batch) {
              assert.ok(inside(c.from, c.length, src.data), 'copies come from data extents');
              assert.equal(c.to, c.from + hostShift * 512, 'and land where the destination keeps them');
            }
            assert.ok(batch.reduce((s, c) => s + c.length, 0) <= 2 * HOST_BATCH);
          }
        },
      ),
      { numRuns: 150 },
    );
  });

  it('random layouts into an allocating destination: scanned by the host in batches, written through the disk', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(piece, { minLength: 1, maxLength: 12 }),
        fc.array(fc.tuple(fc.nat({ max: 4000 * K }), fc.integer({ min: 1, max: 200 * K })), { maxLength: 4 }),
        fc.constantFrom(4096, 64 * K, 1000 * K),
        async (pieces, zeroRuns, chunkSize) => {
          const src = source(pieces, zeroRuns);
          const dst = destination(src.disk.size, src.storage, 0, true);
          const r = await copyDisk(src.disk, dst.disk, { dstZeroed: true, chunkSize });
          assert.ok(Buffer.from(dst.bytes()).equals(Buffer.from(src.bytes)), 'the copy is the source');
          assert.equal(dst.copies.length, 0, 'nothing to copy into');
          const overlaps = ([o, l]: [number, number], [a, n]: [number, number]) => o < a + n && a < o + l;
          const tainted = planned(src.data).filter((d) => src.opaque.some((o) => overlaps(d, o)));
          const viaReads = src.reads.reduce((s, [, n]) => s + n, 0);
          // A scan that stopped with a full buffer is called again for the rest: count each byte once.
          const viaScans = unionLength(src.scans.flat().map((c) => [c.from, c.from + c.length]));
          const dataBytes = src.data.reduce((s, [, n]) => s + n, 0);
          assert.equal(viaReads + viaScans, dataBytes, 'each data byte read once, one way or the other');
          assert.equal(
            viaReads,
            tainted.reduce((s, [, n]) => s + n, 0),
          );
          for (const batch of src.scans) {
            assert.ok(batch.reduce((s, c) => s + c.length, 0) <= SCAN_ZERO_BATCH);
            for (const c of batch)
              assert.equal(c.to, c.from, 'the disk offset of each span (raw-like source)');
          }
          // Zero blocks (4 KiB, absolute) are not written on either path; the rest is, once.
          let nonZero = 0;
          for (const [a, n] of src.data) {
            for (let p = a; p < a + n; ) {
              const q = Math.min(a + n, (Math.floor(p / 4096) + 1) * 4096);
              if (src.bytes.subarray(p, q).some((b) => b !== 0)) nonZero += q - p;
              p = q;
            }
          }
          assert.equal(r.bytesWritten, nonZero);
          assert.equal(
            dst.writes.reduce((s, [, n]) => s + n, 0),
            nonZero,
          );
        },
      ),
      { numRuns: 150 },
    );
  });

  it('random layouts into a destination that allocates on request: allocated first, copied, zeros given back', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(piece, { minLength: 1, maxLength: 12 }),
        fc.array(fc.tuple(fc.nat({ max: 4000 * K }), fc.integer({ min: 1, max: 700 * K })), { maxLength: 4 }),
        async (pieces, zeroRuns) => {
          const src = source(pieces, zeroRuns);
          const dst = allocatingDestination(src.disk.size, src.storage, 40);
          await copyDisk(src.disk, dst.disk, { dstZeroed: true });
          assert.ok(Buffer.from(await dst.bytes()).equals(Buffer.from(src.bytes)), 'the copy is the source');
          // What stays mapped is what holds data: no unit of zeros keeps its space.
          for (const u of dst.mapped()) {
            const unitBytes = src.bytes.subarray(u * 64 * K, (u + 1) * 64 * K);
            assert.ok(
              unitBytes.some((b) => b !== 0),
              `unit ${u} is all zeros in the source but stays allocated`,
            );
          }
          for (const [o, l] of dst.givenBack)
            assert.ok(
              src.bytes.subarray(o, o + l).every((b) => b === 0),
              `gave back ${o}+${l}, which holds data`,
            );
        },
      ),
      { numRuns: 150 },
    );
  });

  it('written zeros at the start are scanned, never allocated; data after them is', async () => {
    // 64 MiB of zeros that the source calls data, then 8 MiB of data.
    const src = source(
      [
        { status: 'data', length: 64 * 1024 * K, opaque: false },
        { status: 'data', length: 8 * 1024 * K, opaque: false },
      ],
      [[0, 64 * 1024 * K]],
    );
    const dst = allocatingDestination(src.disk.size, src.storage, 0);
    await copyDisk(src.disk, dst.disk, { dstZeroed: true });
    assert.ok(Buffer.from(await dst.bytes()).equals(Buffer.from(src.bytes)));
    assert.equal(dst.mapped().length, 128, 'only the 8 MiB of data is mapped');
    assert.equal(dst.allocated, 8 * 1024 * K, 'no zeros were ever allocated');
    assert.deepEqual(dst.givenBack, []);
  });

  it('zeros after data: what the copies in flight allocated is given back, then zeros are scanned', async () => {
    const src = source(
      [
        { status: 'data', length: 8 * 1024 * K, opaque: false },
        { status: 'data', length: 64 * 1024 * K, opaque: false },
        { status: 'data', length: 8 * 1024 * K, opaque: false },
      ],
      [[8 * 1024 * K, 64 * 1024 * K]],
    );
    const dst = allocatingDestination(src.disk.size, src.storage, 0);
    await copyDisk(src.disk, dst.disk, { dstZeroed: true });
    assert.ok(Buffer.from(await dst.bytes()).equals(Buffer.from(src.bytes)));
    assert.equal(dst.mapped().length, 256, 'only the 16 MiB of data stays mapped');
    assert.ok(dst.givenBack.length > 0, 'the copies that met the zeros gave their space back');
    const zeroUnit = (u: number) => src.bytes.subarray(u * 64 * K, (u + 1) * 64 * K).every((b) => b === 0);
    const late = dst.allocations.filter((a) => a.afterGiveBack && zeroUnit(a.unit));
    assert.deepEqual(late, [], 'once space came back, zeros were scanned, not allocated');
  });

  it('zeros scan in big batches through a small buffer; data after them fills it and the scan goes on', async () => {
    const zeros = 24 * SCAN_BUFFER;
    const src = source([{ status: 'data', length: zeros + 20 * SCAN_BUFFER, opaque: false }], [[0, zeros]]);
    const dst = destination(src.disk.size, src.storage, 0, true);
    const reader = src.storage.readSpans!;
    let partial = 0;
    let widest = 0;
    src.storage.readSpans = async (buf, spans, zb) => {
      assert.equal(buf.length, SCAN_BUFFER, 'one scan buffer per worker');
      const r = await reader(buf, spans, zb);
      const asked = spans.reduce((n, sp) => n + sp.length, 0);
      widest = Math.max(widest, r.consumed);
      if (r.consumed < asked) partial++;
      return r;
    };
    const r = await copyDisk(src.disk, dst.disk, { dstZeroed: true });
    assert.ok(Buffer.from(dst.bytes()).equals(Buffer.from(src.bytes)));
    assert.equal(r.bytesRead, src.disk.size);
    assert.equal(r.bytesWritten, 20 * SCAN_BUFFER);
    assert.ok(widest > SCAN_BUFFER, 'a scan of zeros spanned more than its buffer');
    assert.ok(partial > 0, 'data filled a buffer and the scan went on from where it stopped');
  });

  it('no host copies where the bytes must be seen (onData) or zeros written (dstZeroed false)', async () => {
    const pieces: Piece[] = [
      { status: 'data', length: 300 * K, opaque: false },
      { status: 'hole', length: 200 * K, opaque: false },
      { status: 'data', length: 100 * K, opaque: false },
    ];
    for (const opts of [{ dstZeroed: true, onData: () => undefined }, { dstZeroed: false }]) {
      const src = source(pieces, []);
      const dst = destination(src.disk.size, src.storage);
      await copyDisk(src.disk, dst.disk, opts);
      assert.equal(dst.copies.length, 0);
      assert.equal(
        src.reads.reduce((s, [, n]) => s + n, 0),
        400 * K,
      );
      assert.ok(Buffer.from(dst.bytes()).equals(Buffer.from(src.bytes)));
    }
  });

  it('a copier failure stops the copy and is passed on', async () => {
    const src = source([{ status: 'data', length: 3 * HOST_BATCH, opaque: false }], []);
    const dst = destination(src.disk.size, src.storage);
    const store = (await dst.disk.hostSpans(0, 1, 'write'))![0].storage;
    const copierFrom = store.copierFrom!.bind(store);
    let calls = 0;
    store.copierFrom = (from) => {
      const c = copierFrom(from)!;
      return async (spans, zb) => {
        if (++calls === 2) throw new Error('disk on fire');
        return c(spans, zb);
      };
    };
    await assert.rejects(copyDisk(src.disk, dst.disk, { dstZeroed: true }), /disk on fire/);
  });
});
