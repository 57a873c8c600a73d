import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { stack } from '../../src/core/chain.js';
import { type Disk, toDisk } from '../../src/core/disk.js';
import { PlatterError } from '../../src/core/errors.js';
import { zeroDisk } from '../../src/core/zeros.js';
import { cow } from '../../src/layers/cow.js';
import { readonly } from '../../src/layers/readonly.js';
import { memoryStorage } from '../../src/storage/memory.js';
import { testDisk } from '../conformance/disk.js';

const KiB = 1024;

/** A base disk with random content, and its bytes. */
async function base(size: number): Promise<{ disk: Disk; bytes: Uint8Array }> {
  const disk = stack(
    toDisk(cow(size, { granularity: 4 * KiB }), { name: 'base', readOnly: false }),
    zeroDisk(size),
  );
  const bytes = randomBytes(size);
  await disk.write(bytes, 0);
  return { disk, bytes: new Uint8Array(bytes) };
}

function overlay(below: Disk, store: 'memory' | 'storage'): Disk {
  const impl = cow(below.size, store === 'storage' ? { storage: memoryStorage('scratch') } : {});
  return stack(toDisk(impl, { name: 'cow', readOnly: false }), below);
}

testDisk('cow overlay in memory over the zero disk', async (size) => ({
  disk: overlay(zeroDisk(size), 'memory'),
}));
testDisk('cow overlay in a scratch store over the zero disk', async (size) => ({
  disk: overlay(zeroDisk(size), 'storage'),
}));

describe('cow', () => {
  for (const store of ['memory', 'storage'] as const) {
    it(`${store}: writes land in the overlay; the disk below is untouched`, async () => {
      const size = 1024 * KiB + 512;
      const b = await base(size);
      const top = overlay(readonly(b.disk), store);
      const model = new Uint8Array(b.bytes);
      const writes: Array<[number, number]> = [
        [0, 1],
        [65535, 2],
        [100000, 70000],
        [size - 1, 1],
        [size - 70000, 70000],
      ];
      for (const [off, len] of writes) {
        const d = randomBytes(len);
        await top.write(d, off);
        model.set(d, off);
      }
      await top.writeZeroes(3 * 65536, 65536 * 2 + 10);
      model.fill(0, 3 * 65536, 5 * 65536 + 10);
      const got = new Uint8Array(size);
      await top.read(got, 0);
      assert.equal(Buffer.from(got).equals(Buffer.from(model)), true, 'overlay content');
      const under = new Uint8Array(size);
      await b.disk.read(under, 0);
      assert.equal(Buffer.from(under).equals(Buffer.from(b.bytes)), true, 'base unchanged');
      const exts = await top.extents(0, size);
      assert.ok(
        exts.some((e) => e.depth === 1),
        'untouched ranges come from below',
      );
      assert.ok(
        exts.some((e) => e.depth === 0 && e.status === 'zero'),
        'zeroed granules are zero in the overlay',
      );
      await top.close();
    });

    it(`${store}: concurrent partial writes into one new granule both survive`, async () => {
      const size = 256 * KiB;
      const impl = cow(size, store === 'storage' ? { storage: memoryStorage('scratch') } : {});
      // Straight at the layer (no stack()): the overlay must zero-fill a partial first write itself.
      const d = toDisk(impl, { name: 'cow', readOnly: false });
      const a = randomBytes(1000);
      const c = randomBytes(1000);
      await Promise.all([d.write(a, 70000), d.write(c, 90000)]);
      const got = new Uint8Array(65536);
      await d.read(got, 65536);
      const want = new Uint8Array(65536);
      want.set(a, 70000 - 65536);
      want.set(c, 90000 - 65536);
      assert.equal(Buffer.from(got).equals(Buffer.from(want)), true);
      assert.deepEqual(
        (await d.extents(0, size)).map((e) => [e.offset, e.length, e.status]),
        [
          [0, 65536, 'hole'],
          [65536, 65536, 'data'],
          [131072, 131072, 'hole'],
        ],
      );
    });
  }
});

describe('readonly', () => {
  it('reads and extents pass through; every write is EREADONLY', async () => {
    const b = await base(64 * KiB);
    const ro = readonly(b.disk);
    assert.equal(ro.readOnly, true);
    const got = new Uint8Array(100);
    await ro.read(got, 5);
    assert.deepEqual(got, b.bytes.subarray(5, 105));
    assert.deepEqual(await ro.extents(0, ro.size), await b.disk.extents(0, ro.size));
    const isRo = (e: unknown) => e instanceof PlatterError && e.code === 'EREADONLY';
    await assert.rejects(ro.write(new Uint8Array(1), 0), isRo);
    await assert.rejects(ro.writeZeroes(0, 512), isRo);
    await assert.rejects(ro.discard(0, 512), isRo);
    await ro.close();
    const isClosed = (e: unknown) => e instanceof PlatterError && e.code === 'ECLOSED';
    await assert.rejects(b.disk.read(new Uint8Array(1), 0), isClosed);
  });
});
