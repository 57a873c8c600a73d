/**
 * createImage(): the new image's file is flushed unless the caller says it
 * needs no durability yet (convert's DST.partial), and is whole either way;
 * openImage()'s cache= option does the same for a driver's own flushes.
 */
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Host, Storage } from '../../src/core/storage.js';
import { createImage, openImage } from '../../src/formats/open.js';
import { nodeHost } from '../../src/storage/host.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir();

/** nodeHost, counting flush() calls on the storages it creates or opens. */
function countingHost(): { host: Host; flushes: () => number } {
  let n = 0;
  const counted = (s: Storage): Storage => {
    const flush = s.flush.bind(s);
    s.flush = async () => {
      n++;
      await flush();
    };
    return s;
  };
  const host: Host = {
    ...nodeHost,
    create: async (path, options) => counted(await nodeHost.create(path, options)),
    open: async (path, mode) => counted(await nodeHost.open(path, mode)),
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

describe('openImage cache=', () => {
  it("unsafe leaves out a driver's own flushes (VHDX's log ordering); writeback keeps them", async () => {
    const counts: Record<string, number> = {};
    for (const cache of ['writeback', 'unsafe']) {
      const path = join(dir, `cache-${cache}.vhdx`);
      await createImage(nodeHost, path, { format: 'vhdx', size: 8 << 20, flush: false });
      const { host, flushes } = countingHost();
      const disk = await openImage(host, path, { format: 'vhdx', readOnly: false, options: { cache } });
      await disk.write(new Uint8Array(4096).fill(7), 1 << 20);
      await disk.close();
      counts[cache] = flushes();
      const back = await openImage(nodeHost, path, { format: 'vhdx', readOnly: true });
      const buf = new Uint8Array(4096);
      await back.read(buf, 1 << 20);
      await back.close();
      assert.ok(
        buf.every((b) => b === 7),
        `${cache}: the write is there`,
      );
    }
    assert.ok(counts.writeback >= 1, `writeback flushed (${counts.writeback})`);
    assert.equal(counts.unsafe, 0);
  });

  it('is taken by every format (not a driver option), and only writeback or unsafe', async () => {
    for (const format of ['raw', 'qcow2', 'vhd', 'vdi', 'vmdk']) {
      const path = join(dir, `cache-any.${format}`);
      await createImage(nodeHost, path, { format, size: 1 << 20 });
      const disk = await openImage(nodeHost, path, { format, readOnly: false, options: { cache: 'unsafe' } });
      await disk.close();
    }
    await assert.rejects(
      openImage(nodeHost, join(dir, 'cache-any.raw'), {
        format: 'raw',
        readOnly: true,
        options: { cache: 'none' },
      }),
      (e: Error & { code?: string }) =>
        e.code === 'EINVAL' && /cache=none: expected writeback or unsafe/.test(e.message),
    );
  });
});
