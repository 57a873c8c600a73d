import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import type { Extent } from '../../src/core/disk.js';
import { PlatterError } from '../../src/core/errors.js';
import { copyDisk, widened } from '../../src/ops/copy.js';
import type { Progress } from '../../src/ops/progress.js';
import { arrayDisk, assertSameBytes, readAll, toyDisk } from './toy.js';

const K = 1024;

describe('copyDisk', () => {
  it('never reads holes or zero extents of the source', async () => {
    const src = toyDisk(64 * K * K, 64 * K);
    await src.write(randomBytes(100 * K), 3 * K * K);
    await src.writeZeroes(10 * K * K, 4 * K * K);
    src.reads.length = 0;
    const dst = toyDisk(src.size, 64 * K);
    const r = await copyDisk(src, dst, { dstZeroed: true });
    const readBytes = src.reads.reduce((s, [, n]) => s + n, 0);
    assert.equal(readBytes, 128 * K, 'only the two data clusters are read');
    for (const [o, n] of src.reads) assert.ok(o >= 3 * K * K && o + n <= 3 * K * K + 128 * K);
    assert.equal(r.bytesRead, 128 * K);
    assertSameBytes(await readAll(dst), await readAll(src));
    assert.equal(
      dst.allocated(),
      100 * K + 28 * K,
      'the zero tail of the last cluster is not written (4K blocks)',
    );
  });

  it('all-zero data chunks are skipped on a zeroed destination and zeroed otherwise', async () => {
    const src = arrayDisk(new Uint8Array(8 * K * K));
    src.bytes.set(randomBytes(5000), 6 * K * K + 100);
    const dst = toyDisk(src.size, 4 * K);
    const r = await copyDisk(src, dst, { dstZeroed: true, chunkSize: K * K });
    assert.equal(r.bytesRead, src.size, 'an all-data source is read once');
    assert.equal(r.bytesWritten, 8 * K, 'only the two 4K blocks holding data are written');
    assert.equal(dst.allocated(), 8 * K);
    // A destination full of garbage must end up equal: zeros are written there.
    const dirty = arrayDisk(randomBytes(src.size));
    const r2 = await copyDisk(src, dirty, { dstZeroed: false });
    assert.equal(r2.bytesZeroed, src.size - 8 * K);
    assertSameBytes(dirty.bytes, src.bytes);
  });

  it('chunks are aligned to the destination granularity', async () => {
    const src = arrayDisk(randomBytes(3 * K * K + 512));
    const dst = toyDisk(src.size, 256 * K);
    const writes: Array<[number, number]> = [];
    const orig = dst.write.bind(dst);
    dst.write = async (buf, off) => {
      writes.push([off, buf.length]);
      return orig(buf, off);
    };
    await copyDisk(src, dst, { dstZeroed: true, chunkSize: 1000 * K });
    for (const [o, n] of writes) {
      assert.equal(o % (256 * K), 0, `write at ${o} is aligned`);
      assert.ok(n % (256 * K) === 0 || o + n === src.size, `write of ${n} is whole clusters`);
    }
    assertSameBytes(await readAll(dst), src.bytes);
  });

  it('reports progress up to the total and delivers onData in offset order', async () => {
    const src = toyDisk(16 * K * K, 64 * K);
    for (let i = 0; i < 16; i += 3) await src.write(randomBytes(70 * K), i * K * K + 5 * K);
    const dst = toyDisk(src.size);
    const seen: Progress[] = [];
    const ranges: Array<[number, number, boolean]> = [];
    await copyDisk(src, dst, {
      dstZeroed: true,
      chunkSize: 64 * K,
      parallel: 5,
      onProgress: (p) => seen.push({ ...p }),
      onData: async ({ offset, length, data }) => {
        await new Promise((r) => setTimeout(r, Math.random() * 2));
        ranges.push([offset, length, !!data]);
      },
    });
    assert.equal(seen.at(-1)?.done, src.size);
    assert.ok(seen.every((p) => p.phase === 'copying' && p.total === src.size));
    let pos = 0;
    for (const [o, n] of ranges) {
      assert.equal(o, pos, 'onData ranges are contiguous and in order');
      pos += n;
    }
    assert.equal(pos, src.size);
  });

  it('stops with ECANCELED when the signal fires', async () => {
    const src = arrayDisk(randomBytes(8 * K * K));
    const dst = toyDisk(src.size);
    const ac = new AbortController();
    let chunks = 0;
    await assert.rejects(
      copyDisk(src, dst, {
        chunkSize: 64 * K,
        onProgress: () => {
          if (++chunks === 3) ac.abort();
        },
        signal: ac.signal,
      }),
      (e: unknown) => e instanceof PlatterError && e.code === 'ECANCELED',
    );
    assert.ok(dst.written() < src.size, 'the copy stopped early');
  });

  it('a read error stops the copy and is passed on', async () => {
    const src = arrayDisk(randomBytes(4 * K * K));
    src.read = async (_b, o) => {
      if (o >= 2 * K * K) throw new PlatterError('EIO', 'src: input/output error');
    };
    await assert.rejects(copyDisk(src, toyDisk(src.size), { chunkSize: 256 * K }), /input\/output error/);
  });

  it('refuses a destination smaller than the source', async () => {
    await assert.rejects(
      copyDisk(toyDisk(2 * K * K), toyDisk(K * K)),
      (e: unknown) => (e as PlatterError).code === 'ERANGE',
    );
  });

  it('copies a sub-range', async () => {
    const src = arrayDisk(randomBytes(K * K));
    const dst = arrayDisk(new Uint8Array(K * K));
    await copyDisk(src, dst, { offset: 4096, length: 8192 });
    assertSameBytes(dst.bytes.subarray(4096, 12288), src.bytes.subarray(4096, 12288));
    assert.ok(dst.bytes.subarray(0, 4096).every((b) => b === 0));
    assert.ok(dst.bytes.subarray(12288).every((b) => b === 0));
  });
});

describe('copyDisk properties', () => {
  const G = [512, 4096, 65536];
  const op = fc.record({
    kind: fc.constantFrom('data', 'zeros', 'writeZeroes'),
    offset: fc.nat({ max: 2 * K * K }),
    length: fc.integer({ min: 1, max: 300 * K }),
  });
  it('random layouts and write patterns: copy then compare equal; allocation <= source data', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...G),
        fc.constantFrom(...G),
        fc.integer({ min: 1, max: 2 * K * K + 1234 }),
        fc.array(op, { maxLength: 12 }),
        fc.boolean(),
        fc.integer({ min: 1, max: 6 }),
        fc.constantFrom(4096, 64 * K, 1000 * K),
        async (gs, gd, size, ops, zeroed, parallel, chunkSize) => {
          const src = toyDisk(size, gs);
          for (const o of ops) {
            const off = o.offset % size;
            const len = Math.min(o.length, size - off);
            if (o.kind === 'writeZeroes') await src.writeZeroes(off, len);
            else await src.write(o.kind === 'data' ? randomBytes(len) : new Uint8Array(len), off);
          }
          const dst = zeroed ? toyDisk(size, gd) : arrayDisk(randomBytes(size));
          await copyDisk(src, dst, { dstZeroed: zeroed, parallel, chunkSize });
          const a = await readAll(src);
          assertSameBytes(await readAll(dst), a);
          if (zeroed && 'allocated' in dst) {
            // Every allocated destination granule overlaps a data extent of the source:
            // the bound is the size of the destination granules those extents touch.
            const touched = new Set<number>();
            for (const e of await src.extents(0, size)) {
              if (e.status !== 'data') continue;
              const last = Math.floor((e.offset + e.length - 1) / gd);
              for (let b = Math.floor(e.offset / gd); b <= last; b++) touched.add(b);
            }
            const maxData = [...touched].reduce((s, b) => s + Math.min(gd, size - b * gd), 0);
            assert.ok(
              dst.allocated() <= maxData,
              `dst ${dst.allocated()} <= ${maxData} in granules under source data`,
            );
            // Zeros are detected per max(4 KiB, granularity) block: no all-zero block is allocated.
            const z = Math.max(4096, gd);
            let nonZeroBlocks = 0;
            for (let o = 0; o < size; o += z) if (a.subarray(o, o + z).some((b) => b !== 0)) nonZeroBlocks++;
            assert.ok(dst.allocated() <= nonZeroBlocks * z, 'no all-zero block is allocated');
          }
        },
      ),
      {
        numRuns: 60,
        examples: [
          // Source data in separate small granules, each landing in its own larger
          // destination granule (a CI counterexample of an earlier, wrong bound).
          [
            512,
            4096,
            28673,
            [
              { kind: 'data', offset: 0, length: 1 },
              { kind: 'data', offset: 4096, length: 1 },
              { kind: 'data', offset: 1230378, length: 2561 },
            ],
            true,
            1,
            4096,
          ],
        ],
      },
    );
  });
});

describe('widened: data ranges grown to whole granules (DiskFeatures.wholeGranules)', () => {
  it('tiles the window, covers every data byte, aligns data to the unit, shrinks only zeros and holes', () => {
    const unit = 4096;
    const statuses = ['data', 'zero', 'hole'] as const;
    fc.assert(
      fc.property(
        fc.integer({ min: 0, max: 3 }),
        fc.array(fc.tuple(fc.integer({ min: 1, max: 3 * unit }), fc.constantFrom(...statuses)), {
          minLength: 1,
          maxLength: 12,
        }),
        (startUnits, parts) => {
          const from = startUnits * unit + (parts.length % 2) * 512;
          const exts: Extent[] = [];
          let pos = from;
          for (const [len, status] of parts) {
            exts.push({ offset: pos, length: len, status, depth: 0 });
            pos += len;
          }
          const to = pos;
          const out = widened(exts, unit, from, to);
          // Tiles [from, to) in order.
          let at = from;
          for (const e of out) {
            assert.equal(e.offset, at);
            assert.ok(e.length > 0);
            at += e.length;
          }
          assert.equal(at, to);
          const statusAt = (list: readonly Extent[], x: number) =>
            list.find((e) => e.offset <= x && x < e.offset + e.length)?.status;
          for (const e of out) {
            if (e.status === 'data') {
              // Data ranges start and end on the unit (or the window's edge).
              assert.ok(e.offset === from || e.offset % unit === 0, `start ${e.offset}`);
              const end = e.offset + e.length;
              assert.ok(end === to || end % unit === 0, `end ${end}`);
            }
          }
          for (let x = from; x < to; x += 256) {
            const before = statusAt(exts, x);
            const after = statusAt(out, x);
            if (before === 'data') assert.equal(after, 'data', `byte ${x} is data`);
            if (after !== 'data') assert.equal(after, before, `byte ${x} keeps its status`);
          }
        },
      ),
      { numRuns: 300 },
    );
  });
});
