/** Delta links: parentFileNameHint + parentCID, in both directions with qemu-img. */
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { compareWithQemu, GiB, MiB, qemuWrite } from './util.js';

const dir = tempDir('platter-vmdk-chain-');

/** The CID as platter prints it (8 hex digits; qemu drops leading zeros after a write). */
function cidOf(path: string): string {
  const m = /^CID=([0-9a-f]+)/m.exec(readFileSync(path, 'latin1'));
  assert.ok(m, `${path} has a CID`);
  return m[1].padStart(8, '0');
}

describe('vmdk delta links', () => {
  it('a three-deep chain made by qemu-img reads identically (2 GiB boundary included)', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const size = 3 * GiB;
    const base = join(dir, 'q-base.vmdk');
    const mid = join(dir, 'q-mid.vmdk');
    const top = join(dir, 'q-top.vmdk');
    must('qemu-img', [
      'create',
      '-q',
      '-f',
      'vmdk',
      '-o',
      'subformat=twoGbMaxExtentSparse',
      base,
      String(size),
    ]);
    qemuWrite(base, [
      [0, 2 * MiB, 0x01],
      [2 * GiB - MiB, 2 * MiB, 0x02],
    ]);
    must('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'q-base.vmdk', '-F', 'vmdk', mid]);
    qemuWrite(mid, [[MiB - 100, 300, 0x03]]);
    must('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'q-mid.vmdk', '-F', 'vmdk', top]);
    qemuWrite(top, [
      [2 * GiB - 10, 20, 0x04],
      [size - 512, 512, 0x05],
    ]);
    await compareWithQemu(dir, top);
    const disk = await openImage(nodeHost, top, { readOnly: true });
    try {
      assert.equal(disk.layers.length, 3);
      const info = await disk.info();
      assert.deepEqual(info.backing, { name: 'q-mid.vmdk', format: 'vmdk' });
      const ex = await disk.extents(0, 2 * MiB);
      assert.deepEqual(
        ex.map((e) => [e.status, e.depth]),
        [
          ['data', 2],
          ['data', 1],
          ['data', 2],
        ],
      );
    } finally {
      await disk.close();
    }
  });

  it('a child made and written by platter: qemu-img reads it, check clean, parentCID recorded', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'p-base.vmdk');
    const child = join(dir, 'p-child.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', base, '64M']);
    qemuWrite(base, [[0, 8 * MiB, 0x21]]);
    await createImage(nodeHost, child, { format: 'vmdk', backing: { name: 'p-base.vmdk', format: 'vmdk' } });
    const text = readFileSync(child, 'latin1');
    assert.match(text, /parentFileNameHint="p-base.vmdk"/);
    assert.match(text, new RegExp(`parentCID=${cidOf(base)}`));
    const disk = await openImage(nodeHost, child, { readOnly: false });
    try {
      assert.equal(disk.size, 64 * MiB);
      await disk.write(new Uint8Array(100).fill(0x22), MiB + 7); // COW inside a base grain
      await disk.write(new Uint8Array(MiB).fill(0x23), 20 * MiB);
    } finally {
      await disk.close();
    }
    assert.equal(run('qemu-img', ['check', child]).status, 0);
    const chain = must('qemu-img', ['info', '--backing-chain', child]);
    assert.match(chain, /backing file: p-base.vmdk/);
    await compareWithQemu(dir, child);
    // And a grandchild made by qemu on top of platter's child.
    const gc = join(dir, 'p-gc.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'p-child.vmdk', '-F', 'vmdk', gc]);
    qemuWrite(gc, [[MiB, 512, 0x24]]);
    await compareWithQemu(dir, gc);
  });

  it('a parent changed after the child was made is refused, naming both CIDs', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'm-base.vmdk');
    const child = join(dir, 'm-child.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', base, '16M']);
    must('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'm-base.vmdk', '-F', 'vmdk', child]);
    const before = cidOf(base);
    const ok = await openImage(nodeHost, child, { readOnly: true });
    await ok.close();
    // platter writing to the parent renews its CID, as VMware and qemu do.
    const b = await openImage(nodeHost, base, { readOnly: false });
    await b.write(new Uint8Array(512).fill(1), 0);
    await b.close();
    const after = cidOf(base);
    assert.notEqual(after, before);
    await assert.rejects(
      openImage(nodeHost, child, { readOnly: true }),
      (e: unknown) =>
        e instanceof PlatterError &&
        e.code === 'ECORRUPT' &&
        e.message.includes(before) &&
        e.message.includes(after),
    );
  });

  it('streamOptimized cannot have a parent; a non-VMDK parent is refused', async () => {
    const base = join(dir, 's-base.vmdk');
    await createImage(nodeHost, base, { format: 'vmdk', size: MiB });
    await assert.rejects(
      createImage(nodeHost, join(dir, 's-child.vmdk'), {
        format: 'vmdk',
        options: { subformat: 'streamOptimized' },
        backing: { name: 's-base.vmdk', format: 'vmdk' },
      }),
      (e: unknown) => e instanceof PlatterError && e.code === 'EINVAL',
    );
    const raw = join(dir, 's-base.raw');
    await createImage(nodeHost, raw, { format: 'raw', size: MiB });
    await assert.rejects(
      createImage(nodeHost, join(dir, 's-child2.vmdk'), {
        format: 'vmdk',
        backing: { name: 's-base.raw', format: 'raw' },
      }),
      (e: unknown) => e instanceof PlatterError && e.code === 'EINVAL',
    );
  });

  it('setBacking records a new parent with its CID (rebase -u), or none; makeEmpty empties a child', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const a = join(dir, 'r-a.vmdk');
    const b = join(dir, 'r-b.vmdk');
    const child = join(dir, 'r-child.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', a, '8M']);
    must('qemu-img', ['create', '-q', '-f', 'vmdk', b, '8M']);
    qemuWrite(b, [[0, MiB, 0x66]]);
    must('qemu-img', ['create', '-q', '-f', 'vmdk', '-b', 'r-a.vmdk', '-F', 'vmdk', child]);
    qemuWrite(child, [[4 * MiB, 4096, 0x67]]);
    let disk = await openImage(nodeHost, child, { readOnly: false, backing: false });
    try {
      assert.ok(disk.features.setBacking);
      await disk.features.setBacking({ name: 'r-b.vmdk', format: 'vmdk' });
    } finally {
      await disk.close();
    }
    const text = readFileSync(child, 'latin1');
    assert.match(text, /parentFileNameHint="r-b.vmdk"/);
    assert.match(text, new RegExp(`parentCID=${cidOf(b)}`));
    assert.match(must('qemu-img', ['info', child]), /backing file: r-b.vmdk/);
    await compareWithQemu(dir, child);
    disk = await openImage(nodeHost, child, { readOnly: false, backing: false });
    try {
      assert.ok(disk.features.makeEmpty);
      await disk.features.makeEmpty();
      await disk.features.setBacking?.(null);
    } finally {
      await disk.close();
    }
    assert.doesNotMatch(readFileSync(child, 'latin1'), /parentFileNameHint/);
    assert.equal(run('qemu-img', ['check', child]).status, 0);
    disk = await openImage(nodeHost, child, { readOnly: true });
    try {
      assert.deepEqual(
        (await disk.extents(0, disk.size)).map((e) => e.status),
        ['hole'],
      );
    } finally {
      await disk.close();
    }
  });

  it('discard turns whole grains back into holes: the parent shows through (sparse and twoGb)', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    for (const sub of ['monolithicSparse', 'twoGbMaxExtentSparse']) {
      const base = join(dir, `d-base-${sub}.vmdk`);
      const child = join(dir, `d-child-${sub}.vmdk`);
      must('qemu-img', ['create', '-q', '-f', 'vmdk', base, '4M']);
      qemuWrite(base, [[0, 4 * MiB, 0x71]]);
      must('qemu-img', [
        'create',
        '-q',
        '-f',
        'vmdk',
        '-o',
        `subformat=${sub}`,
        '-b',
        `d-base-${sub}.vmdk`,
        '-F',
        'vmdk',
        child,
      ]);
      const disk = await openImage(nodeHost, child, { readOnly: false });
      try {
        await disk.write(new Uint8Array(MiB).fill(0x72), MiB);
        await disk.discard(MiB + 100, 200000); // grains 17 and 18 are whole; the edges stay
        const ex = await disk.extents(MiB, MiB);
        assert.deepEqual(
          ex.map((e) => [e.offset - MiB, e.length, e.depth]),
          [
            [0, 65536, 0],
            [65536, 2 * 65536, 1],
            [3 * 65536, 13 * 65536, 0],
          ],
        );
      } finally {
        await disk.close();
      }
      assert.equal(run('qemu-img', ['check', child]).status, 0);
      await compareWithQemu(dir, child);
    }
  });
});
