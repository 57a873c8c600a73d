/** Extent layouts other writers make: VMware's split size, FLAT with offsets, VMFS, ZERO, other grain sizes. */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { compareWithQemu, GiB, MiB, qemuWrite } from './util.js';

const dir = tempDir('platter-vmdk-layouts-');

function descriptor(createType: string, extents: string[], extra = ''): string {
  return [
    '# Disk DescriptorFile',
    'version=1',
    'CID=12345678',
    'parentCID=ffffffff',
    `createType="${createType}"`,
    '',
    '# Extent description',
    ...extents,
    '',
    '#DDB',
    'ddb.adapterType = "lsilogic"',
    'ddb.uuid.image = "kept-as-is"',
    extra,
  ].join('\n');
}

describe('vmdk layouts', () => {
  it('VMware-sized split extents (4192256 sectors) across the 2 GiB boundary', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const sizes = [4192256, 4192256, 2048];
    const lines = sizes.map((s, i) => {
      const f = `vm-s00${i + 1}.vmdk`;
      must('qemu-img', ['create', '-q', '-f', 'vmdk', join(dir, f), String(s * 512)]);
      return `RW ${s} SPARSE "${f}"`;
    });
    const path = join(dir, 'vm.vmdk');
    writeFileSync(path, descriptor('twoGbMaxExtentSparse', lines));
    const b = 4192256 * 512;
    qemuWrite(path, [
      [b - 1000, 5000, 0x61],
      [2 * GiB - 512, 1024, 0x62],
      [2 * b + 1024 * 512 - 512, 512, 0x63],
    ]);
    await compareWithQemu(dir, path);
    const disk = await openImage(nodeHost, path, { readOnly: true });
    try {
      const extents = (await disk.info()).details?.extents as Array<{ size: number }>;
      assert.deepEqual(
        extents.map((e) => e.size),
        sizes.map((s) => s * 512),
      );
    } finally {
      await disk.close();
    }
  });

  it('FLAT extent at an offset and a VMFS extent; rewriting the CID keeps unknown keys', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const a = Buffer.alloc(3 * MiB);
    for (let i = 0; i < a.length; i++) a[i] = (i * 13) & 0xff;
    writeFileSync(join(dir, 'a.bin'), a);
    writeFileSync(join(dir, 'b.bin'), Buffer.alloc(2 * MiB, 0x5a));
    const path = join(dir, 'flat.vmdk');
    writeFileSync(path, descriptor('vmfs', ['RW 2048 FLAT "a.bin" 2048', 'RW 4096 VMFS "b.bin"']));
    await compareWithQemu(dir, path);
    const disk = await openImage(nodeHost, path, { readOnly: false });
    try {
      const first = new Uint8Array(4);
      await disk.read(first, 0);
      assert.deepEqual([...first], [...a.subarray(MiB, MiB + 4)]);
      await disk.write(new Uint8Array(512).fill(7), MiB);
    } finally {
      await disk.close();
    }
    const text = readFileSync(path, 'utf8');
    assert.match(text, /ddb\.uuid\.image = "kept-as-is"/);
    assert.doesNotMatch(text, /CID=12345678/, 'the CID changes on the first write');
    assert.match(text, /RW 2048 FLAT "a.bin" 2048/);
    await compareWithQemu(dir, path);
  });

  it('ZERO extent reads zeros, reports zero and refuses writes', async () => {
    writeFileSync(join(dir, 'z1.bin'), Buffer.alloc(MiB, 1));
    writeFileSync(join(dir, 'z2.bin'), Buffer.alloc(MiB, 2));
    const path = join(dir, 'zero.vmdk');
    writeFileSync(
      path,
      descriptor('monolithicFlat', ['RW 2048 FLAT "z1.bin" 0', 'RW 4096 ZERO', 'RW 2048 FLAT "z2.bin" 0']),
    );
    const disk = await openImage(nodeHost, path, { readOnly: false });
    try {
      assert.equal(disk.size, 4 * MiB);
      const buf = new Uint8Array(4 * MiB);
      await disk.read(buf, 0);
      assert.equal(buf[MiB - 1], 1);
      assert.ok(buf.subarray(MiB, 3 * MiB).every((x) => x === 0));
      assert.equal(buf[3 * MiB], 2);
      const ex = await disk.extents(0, disk.size);
      assert.deepEqual(
        ex.map((e) => e.status),
        ['data', 'zero', 'data'],
      );
      await assert.rejects(disk.write(new Uint8Array(1), 2 * MiB), (e: unknown) => e instanceof PlatterError);
    } finally {
      await disk.close();
    }
  });

  it('8 KiB and 1 MiB grains written by platter read identically by qemu-img; vmdkinfo opens them', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io', 'vmdkinfo')) return;
    for (const g of ['8192', '1M']) {
      const path = join(dir, `grain-${g}.vmdk`);
      await createImage(nodeHost, path, { format: 'vmdk', size: 40 * MiB, options: { cluster_size: g } });
      const disk = await openImage(nodeHost, path, { readOnly: false });
      try {
        await disk.write(new Uint8Array(10000).fill(0x77), 3 * MiB - 17);
        await disk.write(new Uint8Array(512).fill(0x78), 40 * MiB - 512);
      } finally {
        await disk.close();
      }
      const info = JSON.parse(must('qemu-img', ['info', '--output=json', path]));
      assert.equal(info['cluster-size'], g === '1M' ? MiB : 8192);
      must('vmdkinfo', [path]); // libvmdk refuses grains of 8 sectors or fewer
      assert.equal(run('qemu-img', ['check', path]).status, 0);
      await compareWithQemu(dir, path);
    }
  });

  it('descriptor keys match what qemu-img writes for the same options', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const opts = 'adapter_type=lsilogic,hwversion=7,subformat=monolithicFlat';
    const q = join(dir, 'opt-q.vmdk');
    const p = join(dir, 'opt-p.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', opts, q, '5G']);
    await createImage(nodeHost, p, {
      format: 'vmdk',
      size: 5 * GiB,
      options: { adapter_type: 'lsilogic', hwversion: '7', subformat: 'monolithicFlat' },
    });
    const norm = (f: string, stem: string): string =>
      readFileSync(f, 'utf8')
        .replace(/^CID=.*$/m, 'CID=x')
        .replaceAll(stem, 'NAME')
        .split('\n')
        .filter((l) => l.trim() !== '')
        .join('\n');
    assert.equal(norm(p, 'opt-p'), norm(q, 'opt-q'));
    const disk = await openImage(nodeHost, p, { readOnly: true });
    try {
      const d = (await disk.info()).details ?? {};
      assert.equal(d.adapterType, 'lsilogic');
      assert.equal(d.hwVersion, '7');
    } finally {
      await disk.close();
    }
  });

  it('bad options are EINVAL; -c (compress) needs streamOptimized', async () => {
    const bad = async (options: Record<string, string>): Promise<void> => {
      await assert.rejects(
        createImage(nodeHost, join(dir, 'bad.vmdk'), { format: 'vmdk', size: MiB, options }),
        (e: unknown) => e instanceof PlatterError && e.code === 'EINVAL',
      );
    };
    await bad({ subformat: 'monolithicSparseX' });
    await bad({ adapter_type: 'scsi' });
    await bad({ compat6: 'on', hwversion: '7' });
    await bad({ frobnicate: '1' });
    await bad({ subformat: 'streamOptimized', preallocation: 'full' });
    await bad({ cluster_size: '3000' });
    await bad({ cluster_size: '4K' }); // the spec wants more than 8 sectors
    const sparse = join(dir, 'c-sparse.vmdk');
    await createImage(nodeHost, sparse, { format: 'vmdk', size: MiB });
    await assert.rejects(
      openImage(nodeHost, sparse, { readOnly: false, options: { compress: 'on' } }),
      (e: unknown) => e instanceof PlatterError && e.code === 'EINVAL' && /streamOptimized/.test(e.message),
    );
    const stream = join(dir, 'c-stream.vmdk');
    await createImage(nodeHost, stream, {
      format: 'vmdk',
      size: MiB,
      options: { subformat: 'streamOptimized' },
    });
    const d = await openImage(nodeHost, stream, { readOnly: false, options: { compress: 'on' } });
    await d.close();
  });

  it('preallocation=full and falloc allocate every grain; qemu-img check is clean', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    for (const [sub, pre] of [
      ['monolithicSparse', 'full'],
      ['monolithicSparse', 'falloc'],
      ['twoGbMaxExtentFlat', 'full'],
    ]) {
      const path = join(dir, `pre-${sub}-${pre}.vmdk`);
      await createImage(nodeHost, path, {
        format: 'vmdk',
        size: 3 * MiB + 512,
        options: { subformat: sub, preallocation: pre },
      });
      assert.equal(run('qemu-img', ['check', path]).status, 0);
      const disk = await openImage(nodeHost, path, { readOnly: true });
      try {
        const ex = await disk.extents(0, disk.size);
        assert.deepEqual(
          ex.map((e) => e.status),
          ['data'],
        );
      } finally {
        await disk.close();
      }
      await compareWithQemu(dir, path);
    }
  });

  it('descriptor text keeps its encoding: UTF-8 file names, Latin-1 comments byte for byte', async () => {
    writeFileSync(join(dir, 'dïsk-flat.vmdk'), Buffer.alloc(MiB, 3));
    const utf = join(dir, 'utf.vmdk');
    writeFileSync(utf, descriptor('monolithicFlat', ['RW 2048 FLAT "dïsk-flat.vmdk" 0']));
    const latin = join(dir, 'latin.vmdk');
    writeFileSync(join(dir, 'latin-flat.vmdk'), Buffer.alloc(MiB, 4));
    const latinText = Buffer.concat([
      Buffer.from(descriptor('monolithicFlat', ['RW 2048 FLAT "latin-flat.vmdk" 0'])),
      Buffer.from([0x23, 0x20, 0xe9, 0x80, 0x0a]), // "# é\x80" in a single-byte code page
    ]);
    writeFileSync(latin, latinText);
    for (const p of [utf, latin]) {
      const d = await openImage(nodeHost, p, { readOnly: false });
      await d.write(new Uint8Array(512).fill(9), 0);
      await d.close();
      const again = await openImage(nodeHost, p, { readOnly: true });
      const b = new Uint8Array(2);
      await again.read(b, 511);
      assert.deepEqual([...b], [9, p === utf ? 3 : 4]);
      await again.close();
    }
    assert.match(readFileSync(utf, 'utf8'), /"dïsk-flat.vmdk"/);
    const after = readFileSync(latin);
    assert.ok(after.includes(Buffer.from([0x23, 0x20, 0xe9, 0x80])), 'Latin-1 bytes kept');
  });

  it('a split extent opened on its own is written without gaining a descriptor', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const path = join(dir, 'alone.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', path, '3M']);
    const s001 = join(dir, 'alone-s001.vmdk');
    const before = readFileSync(s001).subarray(512, 512 * 21);
    const d = await openImage(nodeHost, s001, { readOnly: false });
    try {
      assert.equal(d.size, 3 * MiB);
      await d.write(new Uint8Array(512).fill(5), 0);
    } finally {
      await d.close();
    }
    assert.ok(
      readFileSync(s001)
        .subarray(512, 512 * 21)
        .equals(before),
      'descriptor area untouched',
    );
    assert.equal(run('qemu-img', ['check', path]).status, 0);
    const whole = await openImage(nodeHost, path, { readOnly: true });
    try {
      const b = new Uint8Array(1);
      await whole.read(b, 511);
      assert.equal(b[0], 5);
    } finally {
      await whole.close();
    }
  });
});
