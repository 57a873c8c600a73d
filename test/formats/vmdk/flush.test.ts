/**
 * When the VMDK driver fsyncs: flush() does, close() does not (as qcow2, VHDX
 * and qemu-img convert; an fsync at close cost 2-4 s after a 2 GiB convert).
 * What close writes still reaches the file, in every subformat.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Host, Storage } from '../../../src/core/storage.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { tempDir } from '../../helpers/tmp.js';
import { MiB } from './util.js';

const dir = tempDir('platter-vmdk-flush-');

/** nodeHost whose storages count their flush() calls in `flushes`. */
function countingHost(): { host: Host; flushes: () => number } {
  let n = 0;
  const wrap = (s: Storage): Storage =>
    new Proxy(s, {
      get(target, prop) {
        if (prop === 'flush') {
          return async () => {
            n++;
            await target.flush();
          };
        }
        const v = Reflect.get(target, prop, target);
        return typeof v === 'function' ? v.bind(target) : v;
      },
    });
  const host: Host = new Proxy(nodeHost, {
    get(target, prop) {
      if (prop === 'open') return async (...a: Parameters<Host['open']>) => wrap(await target.open(...a));
      if (prop === 'create')
        return async (...a: Parameters<Host['create']>) => wrap(await target.create(...a));
      return Reflect.get(target, prop, target);
    },
  });
  return { host, flushes: () => n };
}

describe('vmdk: flush and close', () => {
  for (const sub of ['monolithicSparse', 'twoGbMaxExtentSparse', 'monolithicFlat', 'streamOptimized']) {
    it(`${sub}: close after writes does not fsync, flush does; the data is there after close`, async () => {
      const path = join(dir, `${sub}.vmdk`);
      const size = 8 * MiB;
      await createImage(nodeHost, path, { format: 'vmdk', size, options: { subformat: sub } });
      const { host, flushes } = countingHost();
      const data = new Uint8Array(3 * 65536).map((_, i) => (i * 7 + 1) & 0xff);

      let disk = await openImage(host, path, { readOnly: false });
      await disk.write(data, MiB);
      await disk.close();
      assert.equal(flushes(), 0, 'close fsyncs');

      // flush() reaches the storage (stream-optimized: only the changes since the last close).
      disk = await openImage(host, path, { readOnly: false });
      await disk.write(data.subarray(0, 65536), 4 * MiB);
      await disk.flush();
      assert.ok(flushes() > 0, 'flush does not fsync');
      const before = flushes();
      await disk.close();
      assert.equal(flushes(), before, 'close after flush fsyncs again');

      const back = await openImage(nodeHost, path, { readOnly: true });
      try {
        const got = new Uint8Array(data.length);
        await back.read(got, MiB);
        assert.deepEqual(got, data);
        const got2 = new Uint8Array(65536);
        await back.read(got2, 4 * MiB);
        assert.deepEqual(got2, data.subarray(0, 65536));
      } finally {
        await back.close();
      }
    });
  }
});
