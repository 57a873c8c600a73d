import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { stack } from '../../src/core/chain.js';
import { zeroDisk } from '../../src/core/zeros.js';
import { mapDisk } from '../../src/ops/map.js';
import { toyDisk } from './toy.js';

const K = 1024;

describe('mapDisk', () => {
  it('a chain: data and zeros per layer, holes at the bottom not present', async () => {
    const base = toyDisk(1024 * K, 64 * K, 'base');
    const top = toyDisk(1024 * K, 64 * K, 'top');
    await base.write(new Uint8Array(64 * K).fill(1), 0);
    await top.write(new Uint8Array(64 * K).fill(2), 128 * K);
    await top.writeZeroes(256 * K, 128 * K);
    const chain = stack(top, stack(base, zeroDisk(base.size)));
    const m = await mapDisk(chain);
    assert.deepEqual(m, [
      { start: 0, length: 64 * K, depth: 1, present: true, zero: false, data: true },
      { start: 64 * K, length: 64 * K, depth: 1, present: false, zero: true, data: false },
      { start: 128 * K, length: 64 * K, depth: 0, present: true, zero: false, data: true },
      { start: 192 * K, length: 64 * K, depth: 1, present: false, zero: true, data: false },
      { start: 256 * K, length: 128 * K, depth: 0, present: true, zero: true, data: false },
      { start: 384 * K, length: 640 * K, depth: 1, present: false, zero: true, data: false },
    ]);
  });

  it('merges adjacent extents and tiles the whole disk', async () => {
    const d = toyDisk(3 * K * K + 512, 4 * K);
    await d.write(new Uint8Array(12 * K).fill(7), 4 * K);
    const m = await mapDisk(stack(d, zeroDisk(d.size)));
    assert.equal(m.length, 3);
    assert.equal(m[1].length, 12 * K);
    assert.equal(
      m.reduce((s, e) => s + e.length, 0),
      d.size,
    );
  });
});
