/**
 * map() decodes standard L2 entries in place (image.ts mapStandard, the hot
 * loop of reads and extents): it must give exactly what decoding each entry
 * with decodeL2/decodeCompressed and merging adjacent runs gives, on seeded
 * random tables of every entry kind, and the same errors for bad entries.
 */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { decodeCompressed, encodeCompressed } from '../../../src/formats/qcow2/compressed.js';
import type { Qcow2Image, Segment } from '../../../src/formats/qcow2/image.js';
import { openQcow2 } from '../../../src/formats/qcow2/index.js';
import {
  decodeL2,
  readHiLo,
  standardEntry,
  writeHiLo,
  writeStandardRun,
} from '../../../src/formats/qcow2/tables.js';
import { memoryStorage } from '../../../src/storage/memory.js';
import { tempDir } from '../../helpers/tmp.js';
import { create, MiB } from './util.js';

const dir = tempDir('platter-qcow2-map-');
let n = 0;

/** A small LCG for seeded choices. */
function rng(seed: number): (k: number) => number {
  let x = seed >>> 0 || 1;
  return (k) => {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    return Math.floor((x / 2 ** 32) * k);
  };
}

async function image(options: Record<string, string>, size: number): Promise<Qcow2Image> {
  const path = join(dir, `map${n++}.qcow2`);
  await create(path, size, options);
  const img = await openQcow2(memoryStorage(path, new Uint8Array(readFileSync(path))), false, false);
  // One byte per table range allocates every L2 table.
  const span = img.l2Entries * img.cs;
  for (let off = 0; off < size; off += span) await img.write(Uint8Array.of(1), off);
  img.fileSize = 1 << 30; // data offsets below are checked against this, never read
  return img;
}

/** The reference: one entry at a time through decodeL2, merged as map() documents. */
async function reference(img: Qcow2Image, offset: number, length: number): Promise<Segment[]> {
  const out: Segment[] = [];
  const cs = img.cs;
  const end = Math.min(offset + length, img.size);
  for (let pos = offset; pos < end; ) {
    const c = Math.floor(pos / cs);
    const within = pos - c * cs;
    const len = Math.min(cs - within, end - pos);
    const l2off = img.l2Offset(Math.floor(c / img.l2Entries));
    let s: Segment;
    if (l2off === 0) s = { offset: pos, length: len, kind: 'hole', host: 0 };
    else {
      const table = await img.loadL2(l2off);
      const [hi, lo] = readHiLo(table, c % img.l2Entries);
      const e = decodeL2(hi, lo, img.zeroFlag, cs, img.file);
      if (e.kind === 'compressed') {
        const comp = decodeCompressed(hi, lo, img.clusterBits, img.file);
        s = { offset: pos, length: len, kind: 'compressed', host: 0, comp, clusterStart: c * cs };
      } else s = { offset: pos, length: len, kind: e.kind, host: e.kind === 'data' ? e.offset + within : 0 };
    }
    const last = out[out.length - 1];
    if (
      last &&
      s.kind !== 'compressed' &&
      last.kind === s.kind &&
      last.offset + last.length === s.offset &&
      (s.kind !== 'data' || last.host + last.length === s.host)
    ) {
      last.length += s.length;
    } else out.push(s);
    pos += len;
  }
  return out;
}

/** Fills every L2 table with seeded entries: holes, zeros (with and without offset), data runs, compressed. */
async function scramble(img: Qcow2Image, seed: number): Promise<void> {
  const r = rng(seed);
  const cs = img.cs;
  let host = 16 * cs;
  for (let l1i = 0; l1i < img.h.l1Size; l1i++) {
    const l2off = img.l2Offset(l1i);
    if (l2off === 0) continue;
    const table = await img.loadL2(l2off);
    for (let i = 0; i < img.l2Entries; ) {
      const kind = r(5);
      // Long runs of holes too: map() skips all-zero entries 64 at a time.
      const run = kind === 0 && r(3) === 0 ? 1 + r(300) : 1 + r(6);
      for (let k = 0; k < run && i < img.l2Entries; k++, i++) {
        if (kind === 0) writeHiLo(table, i, 0, 0);
        // Bit 0 means "zero" in v3 only; v2 ignores it (a hole, or data below).
        else if (kind === 1) writeHiLo(table, i, 0, 1);
        else if (kind === 2 && img.v3) writeHiLo(table, i, ...standardEntry(host, r(2) === 0, true));
        else if (kind === 3) {
          const [hi, lo] = encodeCompressed(host + 512 * r(8), 100 + r(900), img.clusterBits);
          writeHiLo(table, i, hi, lo);
        } else {
          // Data, contiguous within the run unless a gap is drawn.
          if (r(4) === 0) host += cs;
          const [hi, lo] = standardEntry(host, r(2) === 0);
          writeHiLo(table, i, hi, img.v3 ? lo : (lo | r(2)) >>> 0);
        }
        host += cs;
      }
    }
  }
}

describe('qcow2 map(): in-place decoding equals entry-by-entry decoding', () => {
  for (const options of [
    { cluster_size: '4096' },
    { cluster_size: '512', compat: '0.10' },
    { cluster_size: '65536' },
  ] as Record<string, string>[]) {
    it(`seeded tables (${JSON.stringify(options)})`, async () => {
      const size = 24 * MiB + 4096;
      const img = await image(options, size);
      for (let seed = 1; seed <= 4; seed++) {
        await scramble(img, seed);
        const r = rng(seed * 77);
        const ranges: Array<[number, number]> = [
          [0, size],
          [1, size - 1],
        ];
        for (let k = 0; k < 40; k++) {
          const a = r(size);
          ranges.push([a, 1 + r(Math.min(size - a, 6 * MiB))]);
        }
        for (const [a, len] of ranges) {
          assert.deepEqual(
            await img.map(a, len),
            await reference(img, a, len),
            `seed ${seed} at ${a}+${len}`,
          );
        }
      }
    });
  }

  it('writeStandardRun writes what standardEntry gives, cluster by cluster (carries across bytes and 2^32)', () => {
    for (const bits of [9, 12, 16, 21]) {
      const cs = 2 ** bits;
      for (const start of [cs, 2 ** 32 - 3 * cs, 2 ** 40 - cs, 2 ** 55 - 8 * cs, 0xfffff * cs]) {
        const t = new Uint8Array(8 * 40);
        writeStandardRun(t, 3, 30, start, cs);
        for (let k = 0; k < 30; k++) {
          assert.deepEqual(readHiLo(t, 3 + k), standardEntry(start + k * cs, true), `${cs} ${start} +${k}`);
        }
        assert.ok(
          t.subarray(0, 24).every((b) => b === 0) && t.subarray(33 * 8).every((b) => b === 0),
          'only [3, 33)',
        );
      }
    }
  });

  it('bad entries give the errors of entry-by-entry decoding', async () => {
    const img = await image({ cluster_size: '4096' }, 4 * MiB);
    const table = await img.loadL2(img.l2Offset(0));
    const message = (p: Promise<unknown>): Promise<string | undefined> =>
      p.then(
        () => undefined,
        (e: Error) => e.message,
      );
    // Misaligned data offset: decodeL2's own error.
    writeHiLo(table, 3, 0, 4096 * 40 + 512);
    const want = await message(reference(img, 0, MiB));
    assert.match(want ?? '', /data cluster offset 0x28200 is not aligned to the cluster size 4096/);
    assert.equal(await message(img.map(0, MiB)), want);
    // Past the end of the file.
    img.fileSize = 64 * 4096;
    writeHiLo(table, 3, 0, 4096 * 100);
    assert.match(
      (await message(img.map(0, MiB))) ?? '',
      /data cluster offset 0x64000 is past end of file \(size 262144\)/,
    );
    // A compressed cluster past the end.
    writeHiLo(table, 3, ...encodeCompressed(4096 * 100, 300, img.clusterBits));
    assert.match(
      (await message(img.map(0, MiB))) ?? '',
      /compressed cluster offset 0x64000 is past end of file/,
    );
  });
});
