/**
 * File storage copierFrom / native copySpans: file-to-file copies off the main
 * thread that leave all-zero blocks unwritten (the copy engine's host copies).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PlatterError } from '../../src/core/errors.js';
import type { CopySpan } from '../../src/core/storage.js';
import { type FileStorage, openFile } from '../../src/storage/file.js';
import { memoryStorage } from '../../src/storage/memory.js';
import { fallback, native } from '../../src/storage/native.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir();
const KiB = 1024;
const MiB = 1024 * KiB;

function needNative(t: { skip(msg: string): void }): boolean {
  if (native.available) return true;
  if (process.env.CI && process.env.PLATTER_NO_NATIVE !== '1')
    throw new Error('native addon missing under CI');
  t.skip('native addon not loaded: no host copier');
  return false;
}

let n = 0;
/** A source file with `bytes`, and a new empty destination of `size` bytes (a hole). */
async function pair(
  bytes: Uint8Array,
  size: number,
): Promise<{ src: FileStorage; dst: FileStorage; dstPath: string }> {
  const srcPath = join(dir, `src-${n}.img`);
  const dstPath = join(dir, `dst-${n++}.img`);
  writeFileSync(srcPath, bytes);
  writeFileSync(dstPath, '');
  const src = await openFile(srcPath, { write: false });
  const dst = await openFile(dstPath, { write: true });
  await dst.truncate(size);
  return { src, dst, dstPath };
}

/** Data blocks of a file as [start, end) pairs (SEEK_DATA/SEEK_HOLE). */
async function dataOf(s: FileStorage): Promise<Array<[number, number]>> {
  const ext = await s.extents!(0, await s.size());
  return ext.filter((e) => e.kind === 'data').map((e) => [e.offset, e.offset + e.length]);
}

describe('file storage copierFrom (native copySpans)', () => {
  it('copies spans to other offsets and leaves zero blocks unwritten', async (t) => {
    if (!needNative(t)) return;
    // Source: 3 MiB of data with a zero 64 KiB block at 1 MiB and a zero last 4 KiB.
    const bytes = new Uint8Array(randomBytes(3 * MiB));
    bytes.fill(0, MiB, MiB + 64 * KiB);
    bytes.fill(0, 3 * MiB - 4 * KiB);
    const { src, dst, dstPath } = await pair(bytes, 8 * MiB);
    const copy = dst.copierFrom!(src)!;
    assert.ok(copy, 'a file can copy from a file');
    const r = await copy([{ from: 0, to: 4 * MiB, length: 3 * MiB }], 4096);
    assert.equal(r.skipped, 64 * KiB + 4 * KiB);
    assert.equal(r.written, 3 * MiB - r.skipped);
    const out = readFileSync(dstPath);
    assert.equal(out.length, 8 * MiB);
    assert.ok(out.subarray(4 * MiB, 7 * MiB).equals(bytes), 'the data landed at 4 MiB');
    assert.ok(out.subarray(0, 4 * MiB).every((b) => b === 0));
    assert.deepEqual(await dataOf(dst), [
      [4 * MiB, 5 * MiB],
      [5 * MiB + 64 * KiB, 7 * MiB - 4 * KiB],
    ]);
    await src.close();
    await dst.close();
  });

  it('reserves blocks for the data it writes only: none for zero runs, none past the end', async (t) => {
    if (!needNative(t)) return;
    // Pieces of 1 MiB: data [0, 1.5 MiB), zeros [1.5, 3) MiB, data [3, 4) MiB. The second piece
    // is half data: its 512 KiB write is reserved (>= 256 KiB), its zero half is not.
    const bytes = new Uint8Array(randomBytes(4 * MiB));
    bytes.fill(0, 1.5 * MiB, 3 * MiB);
    const { src, dst, dstPath } = await pair(bytes, 0);
    const r = await dst.copierFrom!(src)!([{ from: 0, to: 0, length: 4 * MiB }], 4096);
    assert.equal(r.written, 2.5 * MiB);
    // Allocated: the data, plus at most the file system's own blocks (an extent tree's index block).
    const allocated = (): number => statSync(dstPath).blocks * 512;
    assert.equal(statSync(dstPath).size, 4 * MiB);
    assert.ok(allocated() >= 2.5 * MiB && allocated() < 2.5 * MiB + 64 * KiB, `allocated ${allocated()}`);
    // A write through the store (writeSpans) into the middle and at the end keeps the size the writes make.
    await dst.write(new Uint8Array(randomBytes(MiB)), 1.75 * MiB);
    await dst.write(new Uint8Array(randomBytes(MiB)), 4 * MiB);
    assert.equal(statSync(dstPath).size, 5 * MiB);
    assert.ok(allocated() >= 4.5 * MiB && allocated() < 4.5 * MiB + 64 * KiB, `allocated ${allocated()}`);
    await src.close();
    await dst.close();
  });

  it('zero blocks follow absolute multiples on the destination, at any span offset and length', async (t) => {
    if (!needNative(t)) return;
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            from: fc.nat({ max: 256 * KiB }),
            to: fc.nat({ max: 512 * KiB }),
            length: fc.integer({ min: 1, max: 96 * KiB }),
          }),
          { minLength: 1, maxLength: 5 },
        ),
        fc.constantFrom(512, 4096, 64 * KiB),
        fc.array(fc.tuple(fc.nat({ max: 320 * KiB }), fc.integer({ min: 1, max: 80 * KiB })), {
          maxLength: 4,
        }),
        async (raw, zeroBlock, zeroRuns) => {
          const bytes = new Uint8Array(randomBytes(384 * KiB));
          for (const [o, l] of zeroRuns) bytes.fill(0, o, o + l);
          // Non-overlapping destinations: each span gets its own 1 MiB lane.
          const spans: CopySpan[] = raw.map((s, i) => ({
            from: s.from,
            to: i * MiB + s.to,
            length: Math.min(s.length, bytes.length - s.from),
          }));
          const { src, dst, dstPath } = await pair(bytes, 6 * MiB);
          try {
            const r = await dst.copierFrom!(src)!(spans, zeroBlock);
            const want = new Uint8Array(6 * MiB);
            let written = 0;
            for (const s of spans) {
              want.set(bytes.subarray(s.from, s.from + s.length), s.to);
              // What a block-by-block copier writes: the non-zero zeroBlocks of the span.
              for (let p = s.to; p < s.to + s.length; ) {
                const q = Math.min(s.to + s.length, (Math.floor(p / zeroBlock) + 1) * zeroBlock);
                if (want.subarray(p, q).some((b) => b !== 0)) written += q - p;
                p = q;
              }
            }
            assert.ok(Buffer.from(want).equals(readFileSync(dstPath)));
            const total = spans.reduce((s, x) => s + x.length, 0);
            assert.equal(r.written, written);
            assert.equal(r.skipped, total - written);
          } finally {
            await src.close();
            await dst.close();
          }
        },
      ),
      { numRuns: 60 },
    );
  });

  it('a source shorter than a span is an EIO naming the source and the offset', async (t) => {
    if (!needNative(t)) return;
    const { src, dst } = await pair(new Uint8Array(randomBytes(100 * KiB)), MiB);
    await assert.rejects(
      dst.copierFrom!(src)!([{ from: 64 * KiB, to: 0, length: 64 * KiB }], 4096),
      (e: unknown) =>
        e instanceof PlatterError &&
        e.code === 'EIO' &&
        e.message.includes(src.name) &&
        e.message.includes('unexpected end of file') &&
        e.message.includes('offset 102400'),
    );
    await src.close();
    await dst.close();
  });

  it('offers no copier from a closed, an O_DIRECT or a non-file source, nor without the addon', async (t) => {
    if (!needNative(t)) return;
    const { src, dst } = await pair(new Uint8Array(randomBytes(64 * KiB)), MiB);
    assert.equal(dst.copierFrom!(memoryStorage()), undefined, 'memory is not a host file');
    const direct = await openFile(src.name, { write: false, direct: true });
    if (direct.direct) assert.equal(dst.copierFrom!(direct), undefined, 'O_DIRECT reads keep their own path');
    await direct.close();
    const copy = dst.copierFrom!(src)!;
    await src.close();
    assert.equal(dst.copierFrom!(src), undefined, 'closed');
    await assert.rejects(copy([{ from: 0, to: 0, length: 4096 }], 4096), (e: unknown) => {
      return e instanceof PlatterError && e.code === 'ECLOSED';
    });
    await dst.close();
    const plain = await openFile(dst.name, { write: true }, { native: fallback });
    assert.equal(plain.copierFrom, undefined);
    await plain.close();
    const ro = await openFile(dst.name, { write: false });
    assert.equal(ro.copierFrom, undefined, 'a read-only store takes no copies');
    await ro.close();
  });

  it('readSpans packs data, lets zero pieces pass, stops when the buffer is full and goes on', async (t) => {
    if (!needNative(t)) return;
    // [1 MiB zeros][700 KiB data][300 KiB zeros][100 KiB data], read through a 512 KiB buffer.
    const bytes = new Uint8Array(2100 * KiB);
    bytes.set(randomBytes(700 * KiB), MiB);
    bytes.set(randomBytes(100 * KiB), 2000 * KiB);
    const { src, dst } = await pair(bytes, 1);
    const buf = new Uint8Array(512 * KiB);
    let spans: CopySpan[] = [{ from: 0, to: 5 * MiB, length: bytes.length }];
    const got = new Uint8Array(bytes.length);
    const calls: number[] = [];
    while (spans.length > 0) {
      const r = await src.readSpans!(buf, spans, 4096);
      assert.ok(r.consumed > 0);
      calls.push(r.consumed);
      for (const run of r.runs) {
        assert.ok(run.at + run.length <= buf.length);
        assert.ok(run.to >= 5 * MiB && run.to % 4096 === 0);
        got.set(buf.subarray(run.at, run.at + run.length), run.to - 5 * MiB);
      }
      let skip = r.consumed;
      spans = spans.flatMap((sp) => {
        const k = Math.min(skip, sp.length);
        skip -= k;
        return k === sp.length ? [] : [{ from: sp.from + k, to: sp.to + k, length: sp.length - k }];
      });
    }
    assert.ok(Buffer.from(got).equals(Buffer.from(bytes)), 'every non-zero byte came back, where it belongs');
    assert.ok(calls[0] >= MiB + 512 * KiB, `the leading zeros took no room (first call: ${calls[0]})`);
    assert.ok(calls.length >= 3, 'the data needed several buffers');
    assert.equal(
      calls.reduce((a, b) => a + b, 0),
      bytes.length,
    );
    await src.close();
    await dst.close();
  });
});
