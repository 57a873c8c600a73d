import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { testDisk } from '../../conformance/disk.js';
import { hasPeer, must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { GiB, MiB, qemuWrite } from './util.js';

const SUBFORMATS = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
];
const dir = tempDir('platter-vmdk-write-');
let n = 0;

for (const sub of SUBFORMATS) {
  testDisk(`vmdk ${sub}`, async (size) => {
    const path = join(dir, `conf-${n++}.vmdk`);
    await createImage(nodeHost, path, { format: 'vmdk', size, options: { subformat: sub } });
    const disk = await openImage(nodeHost, path, { readOnly: false });
    return { disk, reopen: () => openImage(nodeHost, path, { readOnly: true }) };
  });
}

testDisk('vmdk monolithicSparse, zeroed_grain=on, 8 KiB grains', async (size) => {
  const path = join(dir, `conf-${n++}.vmdk`);
  await createImage(nodeHost, path, {
    format: 'vmdk',
    size,
    options: { zeroed_grain: 'on', cluster_size: '8192' },
  });
  const disk = await openImage(nodeHost, path, { readOnly: false });
  return { disk, reopen: () => openImage(nodeHost, path, { readOnly: true }) };
});

describe('vmdk: platter writes, qemu-img checks and reads', () => {
  for (const sub of SUBFORMATS) {
    it(`${sub}: 3 GiB, data across 2 GiB and at the end: qemu-img check clean, compare identical, vmdkinfo opens`, async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io', 'vmdkinfo')) return;
      const size = 3 * GiB;
      const path = join(dir, `peer-${sub}.vmdk`);
      const ref = join(dir, `peer-${sub}.raw`);
      await createImage(nodeHost, path, { format: 'vmdk', size, options: { subformat: sub } });
      must('qemu-img', ['create', '-q', '-f', 'raw', ref, String(size)]);
      const writes: Array<[number, number, number]> = [
        [0, 512, 0x11],
        [MiB + 512, 70 * 1024, 0x22],
        [2 * GiB - 65536 - 512, 3 * 65536, 0x33],
        [size - 4096, 4096, 0x44],
      ];
      const disk = await openImage(nodeHost, path, { readOnly: false });
      try {
        for (const [off, len, pat] of writes) await disk.write(new Uint8Array(len).fill(pat), off);
        // Overwrite part of an allocated grain and write random data.
        await disk.write(randomBytes(100), 200);
      } finally {
        await disk.close();
      }
      // Mirror into the reference: first the patterns, then platter's bytes for the random part.
      must('qemu-io', [
        '-f',
        'raw',
        ...writes.flatMap(([o, l, p]) => ['-c', `write -P ${p} ${o} ${l}`]),
        ref,
      ]);
      const head = join(dir, `head-${sub}.bin`);
      must('qemu-img', ['dd', '-f', 'vmdk', '-O', 'raw', `if=${path}`, `of=${head}`, 'bs=512', 'count=1']);
      must('qemu-io', ['-f', 'raw', '-c', `write -s ${head} 0 512`, ref]);
      const check = run('qemu-img', ['check', path]);
      assert.equal(check.status, 0, `qemu-img check: ${check.stdout}${check.stderr}`);
      const cmp = run('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', ref, path]);
      assert.equal(cmp.status, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
      const vi = run('vmdkinfo', [path]);
      assert.equal(vi.status, 0, `vmdkinfo: ${vi.stdout}${vi.stderr}`);
      if (sub === 'streamOptimized') {
        const back = join(dir, 'back.raw');
        must('qemu-img', ['convert', '-O', 'raw', path, back]);
        const c2 = run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', ref, back]);
        assert.equal(c2.status, 0, c2.stdout);
      }
      if (sub.startsWith('twoGb')) {
        const letter = sub.endsWith('Sparse') ? 's' : 'f';
        assert.ok(existsSync(join(dir, `peer-${sub}-${letter}001.vmdk`)));
        assert.ok(existsSync(join(dir, `peer-${sub}-${letter}002.vmdk`)));
      }
    });
  }

  it('streamOptimized reopened for writing (qemu-made and platter-made): grains appended, footer rewritten', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const ref = join(dir, 'sa.raw');
    must('qemu-img', ['create', '-q', '-f', 'raw', ref, '16M']);
    qemuWrite(ref, [[0, 3 * MiB, 0x41]], 'raw');
    for (const maker of ['qemu', 'platter']) {
      const path = join(dir, `sa-${maker}.vmdk`);
      must('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', ref, path]);
      if (maker === 'platter') {
        // Rewrite it once through platter so the layout is platter's (GD_AT_END).
        const d0 = await openImage(nodeHost, path, { readOnly: false });
        await d0.write(new Uint8Array(65536).fill(0x41), 0);
        await d0.close();
      }
      const d = await openImage(nodeHost, path, { readOnly: false });
      try {
        await d.write(new Uint8Array(100).fill(0x42), MiB + 5); // partial: old grain merged
        await d.write(new Uint8Array(2 * 65536).fill(0x43), 10 * MiB); // new grains
      } finally {
        await d.close();
      }
      const want = join(dir, `sa-${maker}-want.raw`);
      must('qemu-img', ['convert', '-O', 'raw', ref, want]);
      qemuWrite(
        want,
        [
          [MiB + 5, 100, 0x42],
          [10 * MiB, 2 * 65536, 0x43],
        ],
        'raw',
      );
      const head = readFileSync(path).subarray(0, 64);
      assert.equal(head.readBigUInt64LE(56), 0xffffffffffffffffn, 'header says GD_AT_END');
      assert.equal(run('qemu-img', ['check', path]).status, 0);
      const cmp = run('qemu-img', ['compare', '-f', 'raw', '-F', 'vmdk', want, path]);
      assert.equal(cmp.status, 0, cmp.stdout + cmp.stderr);
      assert.equal(run('vmdkinfo', [path]).status, 0);
    }
  });

  it('libvmdk (vmdkmount over FUSE) reads what platter wrote byte for byte', async (t) => {
    const fusermount = hasPeer('fusermount3') ? 'fusermount3' : 'fusermount';
    if (!needPeers(t, 'vmdkmount', fusermount)) return;
    // libvmdk 20200926 says "Unsupported disk type" for the flat subformats.
    for (const sub of ['monolithicSparse', 'streamOptimized', 'twoGbMaxExtentSparse']) {
      const size = 8 * MiB;
      const path = join(dir, `libvmdk-${sub}.vmdk`);
      await createImage(nodeHost, path, { format: 'vmdk', size, options: { subformat: sub } });
      const model = new Uint8Array(size);
      const disk = await openImage(nodeHost, path, { readOnly: false });
      try {
        for (const [off, len] of [
          [0, 70000],
          [3 * MiB - 5, 200000],
          [size - 512, 512],
        ]) {
          const data = randomBytes(len);
          model.set(data, off);
          await disk.write(data, off);
        }
      } finally {
        await disk.close();
      }
      const mnt = join(dir, `mnt-${sub}`);
      mkdirSync(mnt);
      const m = run('vmdkmount', [path, mnt]);
      assert.equal(m.status, 0, m.stderr);
      try {
        const got = readFileSync(join(mnt, 'vmdk1'));
        assert.ok(got.equals(Buffer.from(model)), `${sub}: libvmdk sees the same bytes`);
      } finally {
        run(fusermount, ['-u', mnt]);
      }
    }
  });

  it('streamOptimized is a well-formed stream: grains, each GT after its grains, GD, footer, EOS', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const path = join(dir, 'walk.vmdk');
    const size = 130 * MiB; // five grain tables of 32 MiB
    await createImage(nodeHost, path, { format: 'vmdk', size, options: { subformat: 'streamOptimized' } });
    const disk = await openImage(nodeHost, path, { readOnly: false });
    try {
      for (const off of [0, 33 * MiB, 100 * MiB, 129 * MiB]) await disk.write(randomBytes(MiB), off);
    } finally {
      await disk.close();
    }
    const b = readFileSync(path);
    const order: string[] = [];
    let pos = Number(b.readBigUInt64LE(64)) * 512; // overHead: the first record
    let lastLba = -1;
    while (pos < b.length) {
      const val = Number(b.readBigUInt64LE(pos));
      const size = b.readUInt32LE(pos + 8);
      if (size !== 0) {
        assert.ok(val > lastLba, `grain LBAs ascend (${val} after ${lastLba})`);
        lastLba = val;
        order.push(`grain ${Math.floor(val / 65536)}`); // GT index of the grain (65536 sectors per GT)
        pos += Math.ceil((12 + size) / 512) * 512;
        continue;
      }
      const type = b.readUInt32LE(pos + 12);
      order.push(['EOS', 'GT', 'GD', 'footer'][type] ?? `type ${type}`);
      if (type === 0) {
        pos += 512;
        break;
      }
      pos += 512 + val * 512;
    }
    assert.equal(pos, b.length, 'EOS is the last sector');
    const compact = order.filter((x, i) => x !== order[i - 1]);
    assert.deepEqual(compact, [
      'grain 0',
      'GT',
      'grain 1',
      'GT',
      'grain 3',
      'GT',
      'grain 4',
      'GT',
      'GD',
      'footer',
      'EOS',
    ]);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
  });
});
