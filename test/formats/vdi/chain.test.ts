/**
 * Differencing VDIs. qemu-img 7.2 cannot follow a VDI's parent, so the oracle is
 * the model of the writes this test makes (over a qemu-made base).
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isPlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { testDisk } from '../../conformance/disk.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { assertSame, openRo, qemuSize, qemuWrites, readAll } from '../vhd/util.js';

const dir = tempDir('platter-vdi-chain-');
let n = 0;

testDisk('vdi differencing over an empty dynamic parent', async (size) => {
  const base = `cbase-${n}.vdi`;
  const top = join(dir, `ctop-${n++}.vdi`);
  await createImage(nodeHost, join(dir, base), { format: 'vdi', size });
  await createImage(nodeHost, top, { format: 'vdi', backing: { name: base } });
  const disk = await openImage(nodeHost, top, { readOnly: false });
  return { disk, reopen: () => openImage(nodeHost, top, { readOnly: true }) };
});

async function writeModel(path: string, model: Uint8Array, writes: Array<[number, number]>): Promise<void> {
  const d = await openImage(nodeHost, path, { readOnly: false });
  try {
    for (const [off, len] of writes) {
      const data = randomBytes(len);
      await d.write(data, off);
      model.set(data, off);
    }
  } finally {
    await d.close();
  }
}

describe('vdi: differencing chains', () => {
  it('qemu-made base, two platter layers: platter reads the model; zeroing in a child hides the parent', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'base.vdi');
    must('qemu-img', ['create', '-q', '-f', 'vdi', base, '6M']);
    const size = qemuSize(base, 'vdi');
    const model = qemuWrites(base, 'vdi', size, [
      [0, 8192, 0x11],
      [3 * 1024 * 1024 + 17, 5000, 0x22],
      [size - 700, 700, 0x33],
    ]);
    const mid = join(dir, 'mid.vdi');
    const top = join(dir, 'top.vdi');
    await createImage(nodeHost, mid, { format: 'vdi', backing: { name: 'base.vdi' } });
    await writeModel(mid, model, [
      [100, 10],
      [(1 << 20) - 3, 9],
      [4 << 20, 1 << 20],
    ]);
    await createImage(nodeHost, top, { format: 'vdi', backing: { name: 'mid.vdi' } });
    await writeModel(top, model, [
      [105, 1],
      [3 * 1024 * 1024 + 20, 512],
      [size - 1, 1],
    ]);
    {
      const d = await openImage(nodeHost, top, { readOnly: false });
      await d.writeZeroes(2 << 20, 1 << 20);
      model.fill(0, 2 << 20, 3 << 20);
      await d.close();
    }
    const d = await openRo(top);
    try {
      assert.equal(d.layers.length, 3);
      assertSame(await readAll(d), model, 'platter reads the chain');
      const exts = await d.extents(0, d.size);
      assert.ok(
        exts.some((e) => e.depth === 0 && e.status === 'zero'),
        'a zero block in the top layer',
      );
      assert.ok(
        exts.some((e) => e.depth === 1 && e.status === 'data'),
        'data from the middle layer',
      );
      const info = await d.info();
      assert.equal(info.subformat, 'differencing');
      assert.equal(info.backing?.name, 'mid.vdi');
    } finally {
      await d.close();
    }
  });

  it('missing parent, parent UUID mismatch, and a VirtualBox child without a recorded name', async () => {
    const base = join(dir, 'm-base.vdi');
    const other = join(dir, 'm-other.vdi');
    const child = join(dir, 'm-child.vdi');
    await createImage(nodeHost, base, { format: 'vdi', size: 1 << 20 });
    await createImage(nodeHost, other, { format: 'vdi', size: 1 << 20 });
    await createImage(nodeHost, child, { format: 'vdi', backing: { name: 'm-base.vdi' } });
    renameSync(base, `${base}.away`);
    await assert.rejects(
      openRo(child),
      (e: unknown) => isPlatterError(e) && e.code === 'ENOENT' && /m-base\.vdi/.test(e.message),
    );
    renameSync(other, base);
    await assert.rejects(
      openRo(child),
      (e: unknown) => isPlatterError(e) && e.code === 'ECORRUPT' && /UUID mismatch/.test(e.message),
    );
    const forced = await openRo(child, { force: 'on' });
    assert.equal(forced.layers.length, 2);
    await forced.close();
    // Blank the comment: what VirtualBox writes.
    const buf = readFileSync(child);
    buf.fill(0, 84, 340);
    writeFileSync(child, buf);
    await assert.rejects(
      openRo(child),
      (e: unknown) => isPlatterError(e) && e.code === 'EUNSUPPORTED' && /media registry/.test(e.message),
    );
  });

  it('setBacking (rebase -u), makeEmpty (commit) and rebase to nothing', async () => {
    const a = join(dir, 'r-a.vdi');
    const b = join(dir, 'r-b.vdi');
    const child = join(dir, 'r-child.vdi');
    const model = new Uint8Array(3 << 20);
    await createImage(nodeHost, a, { format: 'vdi', size: model.length });
    await writeModel(a, model, [[0, model.length]]);
    await createImage(nodeHost, b, { format: 'vdi', size: model.length });
    {
      const db = await openImage(nodeHost, b, { readOnly: false });
      await db.write(model, 0);
      await db.close();
    }
    await createImage(nodeHost, child, { format: 'vdi', backing: { name: 'r-a.vdi' } });
    await writeModel(child, model, [[1000, 3000]]);
    const rw = await openImage(nodeHost, child, { readOnly: false, backing: false });
    await rw.features.setBacking!({ name: 'r-b.vdi', format: 'vdi' });
    await rw.close();
    let d = await openRo(child);
    assert.equal((await d.info()).backing?.name, 'r-b.vdi');
    assertSame(await readAll(d), model, 'after rebase -u');
    await d.close();

    const chain = await openImage(nodeHost, child, { readOnly: false, forceShare: true });
    const parent = await openImage(nodeHost, b, { readOnly: false, forceShare: true });
    for (const e of await chain.extents(0, chain.size)) {
      if (e.depth !== 0 || e.status !== 'data') continue;
      const buf = new Uint8Array(e.length);
      await chain.read(buf, e.offset);
      await parent.write(buf, e.offset);
    }
    await parent.close();
    await chain.features.makeEmpty!();
    await chain.close();
    d = await openRo(child);
    assertSame(await readAll(d), model, 'after commit');
    assert.ok(
      (await d.extents(0, d.size)).every((e) => e.depth >= 1),
      'the child is empty',
    );
    await d.close();

    const solo = await openImage(nodeHost, child, { readOnly: false, backing: false });
    await solo.features.setBacking!(null);
    await solo.close();
    d = await openRo(child);
    assert.equal((await d.info()).subformat, 'dynamic');
    assert.equal(d.layers.length, 1);
    await d.close();
    assert.equal(JSON.parse(must('qemu-img', ['info', '--output=json', child])).format, 'vdi');
  });

  it('a differencing VDI needs a VDI parent and cannot be static', async () => {
    const raw = join(dir, 'raw-parent.img');
    await createImage(nodeHost, raw, { format: 'raw', size: 1 << 20 });
    await assert.rejects(
      createImage(nodeHost, join(dir, 'on-raw.vdi'), {
        format: 'vdi',
        backing: { name: 'raw-parent.img', format: 'raw' },
      }),
      (e: unknown) => isPlatterError(e) && e.code === 'EUNSUPPORTED',
    );
    await createImage(nodeHost, join(dir, 's-base.vdi'), { format: 'vdi', size: 1 << 20 });
    await assert.rejects(
      createImage(nodeHost, join(dir, 's-child.vdi'), {
        format: 'vdi',
        options: { static: 'on' },
        backing: { name: 's-base.vdi' },
      }),
      (e: unknown) => isPlatterError(e) && e.code === 'EINVAL',
    );
  });
});
