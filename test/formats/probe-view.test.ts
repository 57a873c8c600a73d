/** probeView: the probes' reads of a store's first and last bytes come from two reads made once. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import type { Storage } from '../../src/core/storage.js';
import { probeView } from '../../src/formats/probe-view.js';
import { memoryStorage } from '../../src/storage/memory.js';

/** A store that counts its size() and read() calls, and fails them when asked. */
function counted(data: Uint8Array) {
  const inner = memoryStorage('mem', data);
  const calls = { size: 0, read: 0 };
  let fail = false;
  const s: Storage = {
    ...inner,
    name: 'counted',
    size: async () => {
      calls.size++;
      return inner.size();
    },
    read: async (buf, offset) => {
      calls.read++;
      if (fail) throw new Error('EIO');
      return inner.read(buf, offset);
    },
  };
  return { s, calls, failReads: () => (fail = true) };
}

const readAt = async (s: Storage, offset: number, length: number): Promise<Buffer> => {
  const b = Buffer.alloc(length);
  await s.read(b, offset);
  return b;
};

describe('probeView', () => {
  it('answers size and reads inside the first and last 4 KiB without the store, and the rest from it', async () => {
    const data = randomBytes(100_000);
    const { s, calls } = counted(data);
    const v = await probeView(s);
    const after = { ...calls };
    assert.equal(await v.size(), data.length);
    for (const [off, len] of [
      [0, 8],
      [64, 8],
      [0, 512],
      [4088, 8],
      [data.length - 512, 512],
      [data.length - 511, 8],
      [data.length - 4096, 4096],
    ]) {
      assert.deepEqual(await readAt(v, off, len), data.subarray(off, off + len), `${off}+${len}`);
    }
    assert.deepEqual(calls, after, 'no call reached the store');
    assert.deepEqual(await readAt(v, 4090, 100), data.subarray(4090, 4190), 'past the head');
    assert.deepEqual(await readAt(v, 50_000, 10), data.subarray(50_000, 50_010));
    assert.equal(calls.read, after.read + 2, 'those two went to the store');
    await assert.rejects(v.write(new Uint8Array(1), 0), /a probe writes/);
  });

  it('a store smaller than both ends, an empty one, and one whose reads fail', async () => {
    const small = randomBytes(5000);
    const v = await probeView(counted(small).s);
    assert.deepEqual(await readAt(v, small.length - 512, 512), small.subarray(small.length - 512));
    assert.deepEqual(
      await readAt(v, 4000, 1000),
      small.subarray(4000),
      'straddling both parts: from the store',
    );
    const empty = await probeView(counted(new Uint8Array(0)).s);
    assert.equal(await empty.size(), 0);
    const bad = counted(randomBytes(10_000));
    bad.failReads();
    const same = await probeView(bad.s);
    assert.equal(same, bad.s, 'a store whose reads fail is probed as it is');
  });
});
