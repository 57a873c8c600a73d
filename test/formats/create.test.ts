/**
 * createImage(): the new image's file is flushed unless the caller says it
 * needs no durability yet (convert's DST.partial), and is whole either way.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Host } from '../../src/core/storage.js';
import { createImage, openImage } from '../../src/formats/open.js';
import { nodeHost } from '../../src/storage/host.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir();

/** nodeHost, counting flush() calls on the storages it creates. */
function countingHost(): { host: Host; flushes: () => number } {
  let n = 0;
  const host: Host = {
    ...nodeHost,
    async create(path, options) {
      const s = await nodeHost.create(path, options);
      const flush = s.flush.bind(s);
      s.flush = async () => {
        n++;
        await flush();
      };
      return s;
    },
  };
  return { host, flushes: () => n };
}

describe('createImage flush', () => {
  for (const format of ['raw', 'qcow2', 'vmdk', 'vhd', 'vdi', 'vhdx']) {
    it(`${format}: flush: false leaves out createImage's own flush; the image opens either way`, async () => {
      const counts: number[] = [];
      for (const flush of [undefined, false] as const) {
        const { host, flushes } = countingHost();
        const path = join(dir, `${format}-${flush ?? 'default'}.img`);
        await createImage(host, path, { format, size: 8 << 20, flush });
        counts.push(flushes());
        const disk = await openImage(nodeHost, path, { format, readOnly: true });
        try {
          assert.equal(disk.size, 8 << 20);
          const buf = new Uint8Array(4096);
          await disk.read(buf, (8 << 20) - 4096);
          assert.ok(buf.every((b) => b === 0));
        } finally {
          await disk.close();
        }
      }
      // A driver may flush inside create (ordering barriers: qcow2, VHDX); the
      // final flush of the whole new file is what the option leaves out.
      assert.ok(counts[0] >= 1, 'flushed by default');
      assert.equal(counts[1], counts[0] - 1, `one flush fewer (${counts.join(' vs ')})`);
    });
  }
});
