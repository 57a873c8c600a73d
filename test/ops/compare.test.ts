import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { compareDisks } from '../../src/ops/compare.js';
import { copyDisk } from '../../src/ops/copy.js';
import { arrayDisk, readAll, toyDisk } from './toy.js';

const K = 1024;

describe('compareDisks', () => {
  it('two sparse disks with holes and zeros compare equal without reading', async () => {
    const a = toyDisk(1 << 30, 64 * K);
    const b = toyDisk(1 << 30, 4 * K);
    await a.writeZeroes(100 * K * K, 10 * K * K);
    const r = await compareDisks(a, b);
    assert.equal(r.identical, true);
    assert.equal(r.bytesRead, 0);
    assert.equal(a.reads.length + b.reads.length, 0);
  });

  it('reports the first mismatch rounded down to 512, like qemu-img', async () => {
    const a = arrayDisk(randomBytes(3 * K * K));
    const b = arrayDisk(Buffer.from(a.bytes));
    b.bytes[2 * K * K + 1000] ^= 1;
    b.bytes[2 * K * K + 5000] ^= 1;
    const r = await compareDisks(a, b, { chunkSize: 64 * K });
    assert.equal(r.identical, false);
    assert.equal(r.firstMismatch, 2 * K * K + 512);
    assert.equal(r.ranges, undefined);
  });

  it('--all lists every differing range, merged by sector', async () => {
    const a = toyDisk(8 * K * K, 4 * K);
    const b = toyDisk(8 * K * K, 64 * K);
    await b.write(randomBytes(1), 100); // data vs hole
    await b.write(Uint8Array.of(1, 2, 3), 511); // straddles sectors 0 and 1
    await a.write(randomBytes(2000), 5 * K * K + 10);
    await b.write(new Uint8Array(4096), 7 * K * K); // zero data vs hole: equal
    const r = await compareDisks(a, b, { all: true, chunkSize: 64 * K });
    assert.deepEqual(r.ranges, [
      { offset: 0, length: 1024 },
      { offset: 5 * K * K, length: 2048 },
    ]);
    assert.equal(r.firstMismatch, 0);
  });

  it('different sizes: equal when the extra part is zeros; else the mismatch is past the end', async () => {
    const a = toyDisk(4 * K * K);
    const b = toyDisk(6 * K * K);
    await a.write(Uint8Array.of(9), 77);
    await b.write(Uint8Array.of(9), 77);
    assert.equal((await compareDisks(a, b)).identical, true);
    await b.write(Uint8Array.of(1), 5 * K * K + 3);
    const r = await compareDisks(b, a, { all: true });
    assert.deepEqual(r.ranges, [{ offset: 5 * K * K, length: 512 }]);
  });

  it('property: a copy compares identical; one flipped byte is found at its sector', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 1 << 20 }),
        fc.array(fc.record({ off: fc.nat(), len: fc.integer({ min: 1, max: 70000 }) }), { maxLength: 6 }),
        fc.nat(),
        async (size, writes, flip) => {
          const a = toyDisk(size, 4096);
          for (const w of writes) {
            const off = w.off % size;
            await a.write(randomBytes(Math.min(w.len, size - off)), off);
          }
          const b = toyDisk(size, 65536);
          await copyDisk(a, b, { dstZeroed: true, chunkSize: 8192 });
          assert.equal((await compareDisks(a, b, { chunkSize: 4096 })).identical, true);
          const at = flip % size;
          const orig = (await readAll(b))[at];
          await b.write(Uint8Array.of(orig ^ 0x40), at);
          const r = await compareDisks(a, b, { all: true, chunkSize: 4096 });
          assert.equal(r.firstMismatch, at - (at % 512));
          assert.deepEqual(r.ranges, [
            { offset: at - (at % 512), length: Math.min(512, size - (at - (at % 512))) },
          ]);
        },
      ),
      { numRuns: 40 },
    );
  });
});
