/**
 * Resize tests of the block-mapped formats (VHD, VDI): make an image with known
 * writes, resize it, and check what platter reads back; the caller adds its
 * peers' view of the resized file.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { createImage, openImage } from '../../src/formats/open.js';
import { nodeHost } from '../../src/storage/host.js';
import { assertSame, openRo, readAll } from './vhd/util.js';

export function resizeHelpers(
  format: string,
  dir: string,
  /** The peers' checks of the resized file (`want`: its whole expected content). */
  peerCheck: (path: string, size: number, want: Uint8Array) => void,
) {
  async function make(
    name: string,
    size: number,
    options: Record<string, string>,
    writes: Array<[number, number]>,
  ) {
    const path = join(dir, name);
    await createImage(nodeHost, path, { format, size, options });
    const d = await openImage(nodeHost, path, { readOnly: false });
    const model = new Uint8Array(d.size);
    for (const [off, len] of writes) {
      const data = randomBytes(len);
      await d.write(data, off);
      model.set(data, off);
    }
    const uuid = (await d.info()).details?.uuid;
    await d.close();
    return { path, model, uuid };
  }

  async function resize(path: string, size: number, shrink = false): Promise<void> {
    const d = await openImage(nodeHost, path, { readOnly: false, backing: false });
    try {
      await d.features.resize!(size, { shrink });
    } finally {
      await d.close();
    }
  }

  async function expectResized(path: string, model: Uint8Array, uuid: unknown, size: number): Promise<void> {
    const want = new Uint8Array(size);
    want.set(model.subarray(0, Math.min(size, model.length)));
    const d = await openRo(path);
    try {
      assert.equal(d.size, size);
      assert.equal((await d.info()).details?.uuid, uuid, 'the UUID is kept');
      assertSame(await readAll(d), want, 'platter reads the resized disk');
    } finally {
      await d.close();
    }
    peerCheck(path, size, want);
  }

  return { make, resize, expectResized };
}
