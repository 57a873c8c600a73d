/** DiskFeatures.resize for every subformat, checked by qemu-img (which cannot resize VMDKs itself). */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { compareWithQemu, GiB, MiB } from './util.js';

const dir = tempDir('platter-vmdk-resize-');
const SUBFORMATS = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
];

async function resize(path: string, size: number, shrink = false): Promise<void> {
  const disk = await openImage(nodeHost, path, { readOnly: false });
  try {
    assert.ok(disk.features.resize, 'resize feature');
    await disk.features.resize(size, { shrink });
  } finally {
    await disk.close();
  }
}

async function readAt(path: string, offset: number, n: number): Promise<number[]> {
  const disk = await openImage(nodeHost, path, { readOnly: true });
  try {
    const b = new Uint8Array(n);
    await disk.read(b, offset);
    return [...b];
  } finally {
    await disk.close();
  }
}

function qemuClean(path: string): void {
  const r = run('qemu-img', ['check', path]);
  assert.equal(r.status, 0, `qemu-img check: ${r.stdout}${r.stderr}`);
}

describe('vmdk resize', () => {
  for (const sub of SUBFORMATS) {
    it(`${sub}: grow past 2 GiB boundaries, shrink, grow again`, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const path = join(dir, `${sub}.vmdk`);
      const start = 2 * GiB - MiB;
      await createImage(nodeHost, path, { format: 'vmdk', size: start, options: { subformat: sub } });
      const disk = await openImage(nodeHost, path, { readOnly: false });
      try {
        await disk.write(new Uint8Array(MiB).fill(0x31), 0);
        await disk.write(new Uint8Array(512).fill(0x32), start - 512);
      } finally {
        await disk.close();
      }
      const big = 4 * GiB + 3 * MiB;
      await resize(path, big);
      qemuClean(path);
      assert.equal(await compareWithQemu(dir, path), big);
      assert.deepEqual(await readAt(path, start - 1, 2), [0x32, 0]);
      if (sub.startsWith('twoGb'))
        assert.ok(existsSync(join(dir, `${sub}-${sub.endsWith('Sparse') ? 's' : 'f'}003.vmdk`)));
      // Data in the new area, then shrink below it and grow again: it must not come back.
      const w = await openImage(nodeHost, path, { readOnly: false });
      try {
        await w.write(new Uint8Array(4096).fill(0x33), 3 * GiB);
      } finally {
        await w.close();
      }
      await assert.rejects(
        resize(path, MiB),
        (e: unknown) => e instanceof PlatterError && e.code === 'EINVAL',
      );
      await resize(path, 2 * MiB, true);
      qemuClean(path);
      if (sub.startsWith('twoGb'))
        assert.ok(!existsSync(join(dir, `${sub}-${sub.endsWith('Sparse') ? 's' : 'f'}002.vmdk`)));
      await resize(path, 3 * GiB + MiB);
      qemuClean(path);
      assert.deepEqual(await readAt(path, 3 * GiB, 2), [0, 0]);
      assert.deepEqual(await readAt(path, MiB - 1, 2), [0x31, 0]);
    });
  }
});
