/**
 * Differencing disks. qemu-img 7.2 refuses VHDX differencing disks, so the
 * oracles are libvhdi (vhdiinfo; vhdimount through FUSE) and content the test
 * computes from its own writes.
 */
import assert from 'node:assert/strict';
import { copyFileSync, existsSync, mkdirSync, renameSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { create, MiB, openRead, openWrite, pattern, qemuRaw, readAll, vhdimountRead } from './util.js';

const dir = tempDir('platter-vhdx-diff-');
const SIZE = 12 * MiB;

/** A base filled with a pattern and a child with writes at odd places; returns the expected content. */
async function chain(
  sub: string,
  baseName = 'base.vhdx',
  childOpts: Record<string, string> = {},
): Promise<[string, string, Buffer]> {
  const d0 = join(dir, sub);
  mkdirSync(d0, { recursive: true });
  const base = join(d0, baseName);
  await create(base, SIZE, { block_size: '1M' });
  const model = Buffer.from(pattern(SIZE, 3));
  let d = await openWrite(base);
  await d.write(model, 0);
  await d.close();
  const child = join(d0, 'child.vhdx');
  await create(child, 0, childOpts, baseName);
  d = await openWrite(child);
  const writes: Array<[number, number]> = [
    [0, 512],
    [1, 1],
    [4095, 3],
    [MiB - 1, 5000],
    [3 * MiB, 2 * MiB],
    [SIZE - 1, 1],
  ];
  try {
    for (const [o, l] of writes) {
      const b = pattern(l, o + 11);
      await d.write(b, o);
      model.set(b, o);
    }
    await d.writeZeroes(8 * MiB, 2 * MiB);
    model.fill(0, 8 * MiB, 10 * MiB);
    await d.writeZeroes(7 * MiB + 100, 1000);
    model.fill(0, 7 * MiB + 100, 7 * MiB + 1100);
  } finally {
    await d.close();
  }
  return [base, child, model];
}

describe('vhdx differencing disks', () => {
  it('create -b with a relative name: platter reads the chain; vhdiinfo and vhdimount agree', async (t) => {
    const [base, child, model] = await chain('rel');
    const d = await openRead(child);
    try {
      assert.ok((await readAll(d)).equals(model));
      assert.equal(d.layers.length, 2);
      const info = await d.info();
      assert.equal(info.subformat, 'differencing');
      assert.deepEqual(info.backing, { name: 'base.vhdx', format: 'vhdx' });
      const exts = await d.extents(0, SIZE);
      assert.ok(exts.some((e) => e.depth === 1) && exts.some((e) => e.depth === 0));
    } finally {
      await d.close();
    }
    if (!needPeers(t, 'vhdiinfo')) return;
    const b = await openRead(base);
    const baseGuid = (await b.info()).details?.dataWriteGuid;
    await b.close();
    const out = must('vhdiinfo', [child]);
    assert.match(out, /Disk type\s*:\s*Differential/);
    assert.match(out, new RegExp(`Parent identifier\\s*:\\s*${baseGuid}`));
    if (!existsSync('/dev/fuse') || !needPeers(t, 'vhdimount')) return;
    assert.ok((await vhdimountRead(child)).equals(model), 'vhdimount content differs');
  });

  it('an absolute parent path is found after the child moves away', async () => {
    const [base, child, model] = await chain('abs-a');
    const d1 = join(dir, 'abs-b', 'deeper');
    mkdirSync(d1, { recursive: true });
    const moved = join(d1, 'child.vhdx');
    // Recreate the child naming the parent by its absolute path, then move it.
    const child2 = join(dir, 'abs-a', 'child2.vhdx');
    await create(child2, 0, {}, base);
    const d = await openWrite(child2);
    await d.write(model.subarray(0, 3 * MiB), 0);
    await d.close();
    renameSync(child2, moved);
    const r = await openRead(moved);
    try {
      const got = await readAll(r);
      assert.ok(got.subarray(0, 3 * MiB).equals(model.subarray(0, 3 * MiB)));
      const baseContent = await openRead(base);
      const want = await readAll(baseContent);
      await baseContent.close();
      assert.ok(got.subarray(3 * MiB).equals(want.subarray(3 * MiB)));
      const loc = (await r.info()).details?.parentLocator as Record<string, string>;
      assert.match(loc.absolute_win32_path, /^\\\\\?\\/);
      assert.equal(loc.relative_path, 'base.vhdx');
    } finally {
      await r.close();
    }
    assert.ok(existsSync(child));
  });

  it('a chain of three over a qemu-made base', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const d0 = join(dir, 'three');
    mkdirSync(d0, { recursive: true });
    const base = join(d0, 'q.vhdx');
    must('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', base, String(SIZE)]);
    must('qemu-io', [
      '-f',
      'vhdx',
      '-c',
      'write -P 0x61 1000 3000000',
      '-c',
      `write -P 0x62 ${SIZE - 4096} 4096`,
      base,
    ]);
    const model = qemuRaw(base, `${base}.raw`);
    const mid = join(d0, 'mid.vhdx');
    const top = join(d0, 'top.vhdx');
    await create(mid, 0, { block_size: '1M' }, 'q.vhdx');
    let d = await openWrite(mid);
    await d.write(pattern(777, 1), 2 * MiB + 1);
    model.set(pattern(777, 1), 2 * MiB + 1);
    await d.close();
    await create(top, 0, {}, 'mid.vhdx');
    d = await openWrite(top);
    await d.write(pattern(5000, 2), 2 * MiB - 10);
    model.set(pattern(5000, 2), 2 * MiB - 10);
    await d.close();
    d = await openRead(top);
    try {
      assert.equal(d.layers.length, 3);
      assert.ok((await readAll(d)).equals(model));
    } finally {
      await d.close();
    }
    // The base is untouched: qemu still reads it as before.
    must('qemu-img', ['check', '-f', 'vhdx', base]);
  });

  it('setBacking(null) turns the child into a dynamic disk; makeEmpty drops its blocks', async () => {
    const [base, child, model] = await chain('features');
    const baseDisk = await openRead(base);
    const baseContent = await readAll(baseDisk);
    await baseDisk.close();
    const copy = join(dir, 'features', 'child-copy.vhdx');
    copyFileSync(child, copy);

    let d = await openWrite(child);
    await d.features.makeEmpty?.();
    await d.close();
    d = await openRead(child);
    try {
      assert.ok((await readAll(d)).equals(baseContent));
      assert.ok((await d.extents(0, SIZE)).every((e) => e.depth === 1));
    } finally {
      await d.close();
    }

    d = await openWrite(copy);
    const own = await d.extents(0, SIZE);
    await d.features.setBacking?.(null);
    await d.close();
    d = await openRead(copy);
    try {
      const info = await d.info();
      assert.equal(info.subformat, 'dynamic');
      assert.equal(info.backing, undefined);
      const got = await readAll(d);
      // What the child held itself stays; what came from the parent now reads zeros.
      for (const e of own) {
        const want = e.depth === 0 ? model.subarray(e.offset, e.offset + e.length) : Buffer.alloc(e.length);
        assert.ok(got.subarray(e.offset, e.offset + e.length).equals(want), `range ${e.offset}+${e.length}`);
      }
    } finally {
      await d.close();
    }
  });

  it('setBacking to another parent records it', async () => {
    const [base, child, model] = await chain('rebase');
    const other = join(dir, 'rebase', 'other.vhdx');
    copyFileSync(base, other);
    let d = await openWrite(child);
    await d.features.setBacking?.({ name: 'other.vhdx', format: 'vhdx' });
    await d.close();
    d = await openRead(child);
    try {
      assert.deepEqual((await d.info()).backing, { name: 'other.vhdx', format: 'vhdx' });
      assert.ok((await readAll(d)).equals(model));
    } finally {
      await d.close();
    }
  });
});

describe('vhdx parent linkage and resize of a differencing disk', () => {
  it('a changed parent makes the linkage stale; check -r all relinks it', async (t) => {
    const [base, child, model] = await chain('linkage');
    let d = await openWrite(base);
    await d.write(pattern(512, 99), 0); // the parent's DataWriteGuid changes; the child's own sector 0 hides it
    await d.close();
    d = await openRead(child);
    let r = await d.features.check?.({ repair: 'none' });
    await d.close();
    assert.equal(r?.corruptions, 1);
    assert.ok(r?.messages.some((m) => /parent_linkage/.test(m)));
    d = await openWrite(child);
    r = await d.features.check?.({ repair: 'all' });
    await d.close();
    assert.equal(r?.corruptions, 0);
    assert.equal(r?.repaired?.corruptions, 1);
    d = await openRead(child);
    try {
      assert.equal((await d.features.check?.({ repair: 'none' }))?.corruptions, 0);
      assert.ok((await readAll(d)).equals(model));
    } finally {
      await d.close();
    }
    if (!needPeers(t, 'vhdiinfo')) return;
    const b = await openRead(base);
    const guid = (await b.info()).details?.dataWriteGuid;
    await b.close();
    assert.match(must('vhdiinfo', [child]), new RegExp(`Parent identifier\\s*:\\s*${guid}`));
  });

  it('growing a child reads zeros past the parent; shrinking cuts it', async () => {
    const [, child, model] = await chain('resize');
    let d = await openWrite(child);
    await d.features.resize?.(SIZE + 5 * MiB, { shrink: false });
    await d.close();
    d = await openWrite(child);
    try {
      assert.equal(d.size, SIZE + 5 * MiB);
      const got = await readAll(d);
      assert.ok(got.subarray(0, SIZE).equals(model));
      assert.ok(got.subarray(SIZE).every((x) => x === 0));
      await d.write(pattern(3000, 5), SIZE + MiB);
      await d.features.resize?.(SIZE - MiB, { shrink: true });
    } finally {
      await d.close();
    }
    d = await openRead(child);
    try {
      assert.equal(d.size, SIZE - MiB);
      assert.ok((await readAll(d)).equals(model.subarray(0, SIZE - MiB)));
    } finally {
      await d.close();
    }
  });
});

describe('vhdx: a large differencing disk', () => {
  it('writes in 70 chunks (more sector bitmaps than platter caches) read back', async () => {
    const d0 = join(dir, 'large');
    mkdirSync(d0, { recursive: true });
    const chunk = 4 * 1024 * MiB; // 2^23 sectors of 512 bytes: one sector bitmap each
    const size = 71 * chunk;
    await create(join(d0, 'base.vhdx'), size, { block_size: '32M' });
    const child = join(d0, 'child.vhdx');
    await create(child, 0, {}, 'base.vhdx');
    let d = await openWrite(child);
    try {
      for (let c = 0; c < 70; c++) await d.write(pattern(1024, c + 1), c * chunk + 512 * (c + 1));
      // Before the commit: the changed bitmaps must survive the bounded cache.
      for (let c = 0; c < 70; c += 7) {
        const got = new Uint8Array(1024);
        await d.read(got, c * chunk + 512 * (c + 1));
        assert.ok(Buffer.from(got).equals(Buffer.from(pattern(1024, c + 1))), `chunk ${c} before close`);
      }
    } finally {
      await d.close();
    }
    d = await openRead(child);
    try {
      for (let c = 0; c < 70; c++) {
        const got = new Uint8Array(2048);
        await d.read(got, c * chunk + 512 * c);
        const want = new Uint8Array(2048);
        want.set(pattern(1024, c + 1), 512);
        assert.ok(Buffer.from(got).equals(Buffer.from(want)), `chunk ${c}`);
      }
      const own = (await d.extents(0, 2 * chunk)).filter((e) => e.depth === 0);
      assert.deepEqual(
        own.map((e) => [e.offset, e.length]),
        [
          [512, 1024],
          [chunk + 1024, 1024],
        ],
      );
    } finally {
      await d.close();
    }
  });
});

describe('vhdx: libvhdi reads what platter writes', () => {
  const cases: Array<[string, Record<string, string>, boolean]> = [
    ['dynamic', { block_size: '1M' }, false],
    ['fixed', { subformat: 'fixed', block_size: '1M' }, false],
    [
      'dynamic, 4096-byte sectors (qemu cannot open these)',
      { block_size: '1M', logical_sector_size: '4096' },
      false,
    ],
    ['differencing, 4096-byte sectors', { block_size: '1M', logical_sector_size: '4096' }, true],
  ];
  for (const [name, opts, diff] of cases) {
    it(name, async (t) => {
      if (!needPeers(t, 'vhdiinfo', 'vhdimount') || !existsSync('/dev/fuse')) return;
      const d0 = join(dir, `libvhdi-${name.replace(/\W+/g, '_')}`);
      mkdirSync(d0, { recursive: true });
      const base = join(d0, 'base.vhdx');
      await create(base, 6 * MiB, opts);
      const model = Buffer.alloc(6 * MiB);
      let top = base;
      if (diff) {
        const d = await openWrite(base);
        await d.write(pattern(6 * MiB, 4), 0);
        await d.close();
        model.set(pattern(6 * MiB, 4));
        top = join(d0, 'child.vhdx');
        await create(top, 0, {}, 'base.vhdx');
      }
      const d = await openWrite(top);
      for (const [o, l] of [
        [4096, 8192],
        [MiB - 4096, 3 * MiB],
        [6 * MiB - 4096, 4096],
      ]) {
        await d.write(pattern(l, o), o);
        model.set(pattern(l, o), o);
      }
      await d.close();
      const info = must('vhdiinfo', [top]);
      assert.match(info, new RegExp(`Bytes per sector\\s*:\\s*${opts.logical_sector_size ?? 512}`));
      assert.match(
        info,
        new RegExp(
          `Disk type\\s*:\\s*${diff ? 'Differential' : opts.subformat === 'fixed' ? 'Fixed' : 'Dynamic'}`,
        ),
      );
      assert.ok((await vhdimountRead(top)).equals(model), 'vhdimount content differs');
    });
  }
});
