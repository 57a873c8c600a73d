import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { stack } from '../../src/core/chain.js';
import { type DiskImpl, type Extent, toDisk } from '../../src/core/disk.js';
import { zeroDisk } from '../../src/core/zeros.js';
import { testDisk } from '../conformance/disk.js';

/** A toy sparse disk: granule-sized blocks kept in a Map; absent blocks are holes. */
function toyImpl(size: number, g: number): DiskImpl & { blocks: Map<number, Uint8Array> } {
  const blocks = new Map<number, Uint8Array>();
  return {
    size,
    granularity: g,
    blocks,
    async read(buf, offset) {
      for (let i = 0; i < buf.length; ) {
        const b = Math.floor((offset + i) / g);
        const within = (offset + i) % g;
        const n = Math.min(g - within, buf.length - i);
        const blk = blocks.get(b);
        if (blk) buf.set(blk.subarray(within, within + n), i);
        else buf.fill(0, i, i + n);
        i += n;
      }
    },
    async write(buf, offset) {
      for (let i = 0; i < buf.length; ) {
        const b = Math.floor((offset + i) / g);
        const within = (offset + i) % g;
        const n = Math.min(g - within, buf.length - i);
        let blk = blocks.get(b);
        if (!blk) {
          blk = new Uint8Array(g);
          blocks.set(b, blk);
        }
        blk.set(buf.subarray(i, i + n), within);
        i += n;
      }
    },
    async extents(offset, length) {
      const out: Extent[] = [];
      const end = offset + length;
      for (let pos = offset; pos < end; ) {
        const b = Math.floor(pos / g);
        const n = Math.min((b + 1) * g, end) - pos;
        out.push({ offset: pos, length: n, status: blocks.has(b) ? 'data' : 'hole', depth: 0 });
        pos += n;
      }
      return out;
    },
  };
}

testDisk('toy sparse disk stacked on zeroDisk', async (size) => {
  const top = toDisk(toyImpl(size, 65536), { name: 'toy', readOnly: false });
  return { disk: stack(top, zeroDisk(size)) };
});

testDisk('toy overlay on a toy base', async (size) => {
  const base = toDisk(toyImpl(size, 4096), { name: 'base', readOnly: false });
  const top = toDisk(toyImpl(size, 65536), { name: 'top', readOnly: false });
  return { disk: stack(top, stack(base, zeroDisk(size))) };
});

describe('stack', () => {
  it('partial write into a hole granule copies the rest from below', async () => {
    const g = 65536;
    const baseImpl = toyImpl(4 * g, 512);
    const base = stack(toDisk(baseImpl, { name: 'base', readOnly: false }), zeroDisk(4 * g));
    await base.write(new Uint8Array(4 * g).fill(7), 0);
    const topImpl = toyImpl(4 * g, g);
    const top = toDisk(topImpl, { name: 'top', readOnly: false });
    const chain = stack(top, base);
    await chain.write(new Uint8Array(10).fill(9), g + 100);
    const whole = new Uint8Array(4 * g);
    await chain.read(whole, 0);
    assert.equal(whole[g + 99], 7);
    assert.equal(whole[g + 100], 9);
    assert.equal(whole[g + 110], 7);
    // The overlay holds the whole granule, copied.
    assert.ok(topImpl.blocks.get(1)?.every((b, i) => b === (i >= 100 && i < 110 ? 9 : 7)));
    const exts = await chain.extents(0, 4 * g);
    assert.deepEqual(
      exts.map((e) => [e.offset, e.length, e.status, e.depth]),
      [
        [0, g, 'data', 1],
        [g, g, 'data', 0],
        [2 * g, 2 * g, 'data', 1],
      ],
    );
    assert.equal(chain.layers.length, 2);
  });

  it('backing shorter than overlay reads zeros past its end', async () => {
    const base = stack(toDisk(toyImpl(1024, 512), { name: 'b', readOnly: false }), zeroDisk(1024));
    await base.write(new Uint8Array(1024).fill(1), 0);
    const chain = stack(toDisk(toyImpl(4096, 512), { name: 't', readOnly: false }), base);
    const buf = new Uint8Array(4096);
    await chain.read(buf, 0);
    assert.equal(buf[1023], 1);
    assert.equal(buf[1024], 0);
    const exts = await chain.extents(0, 4096);
    assert.deepEqual(
      exts.map((e) => [e.offset, e.status]),
      [
        [0, 'data'],
        [1024, 'hole'],
      ],
    );
  });

  it('concurrent partial writes in one hole granule keep both', async () => {
    const g = 65536;
    const base = stack(toDisk(toyImpl(g, 512), { name: 'b', readOnly: false }), zeroDisk(g));
    await base.write(new Uint8Array(g).fill(5), 0);
    const chain = stack(toDisk(toyImpl(g, g), { name: 't', readOnly: false }), base);
    await Promise.all([
      chain.write(new Uint8Array(1).fill(1), 10),
      chain.write(new Uint8Array(1).fill(2), 20),
    ]);
    const buf = new Uint8Array(g);
    await chain.read(buf, 0);
    assert.deepEqual([buf[9], buf[10], buf[20], buf[21]], [5, 1, 2, 5]);
  });
});
