import assert from 'node:assert/strict';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { compareWithQemu, GiB, MiB, qemuWrite } from './util.js';

const SUBFORMATS = [
  'monolithicSparse',
  'monolithicFlat',
  'twoGbMaxExtentSparse',
  'twoGbMaxExtentFlat',
  'streamOptimized',
];

describe('vmdk: qemu-img writes, platter reads', () => {
  const dir = tempDir('platter-vmdk-read-');

  for (const sub of SUBFORMATS) {
    it(`${sub}, 3 GiB + 7 sectors, data across the 2 GiB boundary and at the end`, async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const size = 3 * GiB + 7 * 512;
      const path = join(dir, `${sub}.vmdk`);
      const writes: Array<[number, number, number]> = [
        [0, 4096, 0x11],
        [MiB + 512, 70 * 1024, 0x22],
        [2 * GiB - 65536 - 512, 3 * 65536, 0x33],
        [size - 4096, 4096, 0x44],
      ];
      if (sub === 'streamOptimized') {
        // qemu writes streamOptimized through convert only (compressed, whole clusters).
        const src = join(dir, `${sub}-src.qcow2`);
        must('qemu-img', ['create', '-q', '-f', 'qcow2', src, String(size)]);
        qemuWrite(src, writes, 'qcow2');
        must('qemu-img', ['convert', '-O', 'vmdk', '-o', 'subformat=streamOptimized', src, path]);
      } else {
        must('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', `subformat=${sub}`, path, String(size)]);
        qemuWrite(path, writes);
      }
      const got = await compareWithQemu(dir, path);
      assert.equal(got, size);
      const disk = await openImage(nodeHost, path, { readOnly: true });
      try {
        const info = await disk.info();
        assert.equal(info.format, 'vmdk');
        assert.equal(info.subformat, sub);
        if (!sub.endsWith('Flat')) assert.equal(info.granularity, 65536);
        const buf = new Uint8Array(2);
        await disk.read(buf, 2 * GiB - 1);
        assert.deepEqual([...buf], [0x33, 0x33]);
      } finally {
        await disk.close();
      }
    });
  }

  it('zeroed-grain GTEs read as zero extents', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'zg.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'zeroed_grain=on', path, '16M']);
    qemuWrite(path, [[0, 4 * MiB, 0x55]]);
    must('qemu-io', ['-f', 'vmdk', '-c', 'write -z 1M 1M', path]);
    await compareWithQemu(dir, path);
    const disk = await openImage(nodeHost, path, { readOnly: true });
    try {
      const ex = await disk.extents(0, 4 * MiB);
      assert.deepEqual(
        ex.map((e) => [e.offset, e.length, e.status]),
        [
          [0, MiB, 'data'],
          [MiB, MiB, 'zero'],
          [2 * MiB, 2 * MiB, 'data'],
        ],
      );
      assert.equal((await disk.info()).details?.zeroedGrain, true);
    } finally {
      await disk.close();
    }
  });

  it('300 GiB (9600 grain tables, more than the read cache keeps) maps and reads correctly', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'big.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', path, '300G']);
    qemuWrite(path, [
      [0, 65536, 0x61],
      [299 * GiB, 65536, 0x62],
    ]);
    const disk = await openImage(nodeHost, path, { readOnly: true });
    try {
      const ex = await disk.extents(0, disk.size);
      assert.deepEqual(
        ex.filter((e) => e.status === 'data').map((e) => [e.offset, e.length]),
        [
          [0, 65536],
          [299 * GiB, 65536],
        ],
      );
      const b = new Uint8Array(1);
      await disk.read(b, 100); // GT 0 was evicted by the walk: read again
      assert.equal(b[0], 0x61);
      await disk.read(b, 299 * GiB + 100);
      assert.equal(b[0], 0x62);
      const r = await disk.features.check?.({ repair: 'none' });
      assert.equal(r?.corruptions, 0);
    } finally {
      await disk.close();
    }
  });
});
