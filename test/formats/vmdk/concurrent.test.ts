/** Many writes in flight at once (as the copy engine and the NBD server issue them) land intact. */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { MiB } from './util.js';

const dir = tempDir('platter-vmdk-conc-');

function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

describe('vmdk concurrent writes', () => {
  for (const [sub, extra] of [
    ['monolithicSparse', {}],
    ['monolithicSparse', { zeroed_grain: 'on' }],
    ['streamOptimized', {}],
    ['twoGbMaxExtentFlat', {}],
  ] as Array<[string, Record<string, string>]>) {
    it(`${sub} ${JSON.stringify(extra)}: batches of 16 disjoint writes, zeroings and discards in parallel`, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const size = 8 * MiB;
      const path = join(dir, `${sub}-${Object.keys(extra).length}.vmdk`);
      await createImage(nodeHost, path, { format: 'vmdk', size, options: { subformat: sub, ...extra } });
      const model = new Uint8Array(size);
      const rnd = prng(42 + sub.length);
      const disk = await openImage(nodeHost, path, { readOnly: false });
      try {
        for (let batch = 0; batch < 6; batch++) {
          // 16 disjoint slots, not grain-aligned (neighbours share grains); each write stays inside its slot.
          const slot = Math.floor(size / 16) - 4099;
          const jobs: Promise<void>[] = [];
          for (let k = 0; k < 16; k++) {
            const off = k * slot + Math.floor(rnd() * slot * 0.5);
            const len = 1 + Math.floor(rnd() * (slot * 0.5 - 1));
            const r = rnd();
            if (r < 0.2) {
              model.fill(0, off, off + len);
              jobs.push(disk.writeZeroes(off, len));
            } else if (r < 0.3) {
              // Discard frees whole grains of sparse extents (no parent here: they read zeros).
              if (!sub.endsWith('Flat'))
                model.fill(0, Math.ceil(off / 65536) * 65536, Math.floor((off + len) / 65536) * 65536);
              jobs.push(disk.discard(off, len));
            } else {
              const data = new Uint8Array(len).fill(1 + Math.floor(rnd() * 255));
              model.set(data, off);
              jobs.push(disk.write(data, off));
            }
          }
          await Promise.all(jobs);
        }
        const got = new Uint8Array(size);
        await disk.read(got, 0);
        assert.ok(Buffer.from(got).equals(Buffer.from(model)), 'content matches the model before close');
      } finally {
        await disk.close();
      }
      const ref = join(dir, 'model.raw');
      writeFileSync(ref, model);
      assert.equal(run('qemu-img', ['check', path]).status, 0);
      const cmp = run('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', ref, path]);
      assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
    });
  }
});
