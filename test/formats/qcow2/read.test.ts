/**
 * qemu-img/qemu-io write, platter reads: every image qemu-img 7.2 makes reads
 * byte-identical to `qemu-img convert -O raw`, with extents that agree.
 */
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Disk } from '../../../src/core/disk.js';
import { PlatterError } from '../../../src/core/errors.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { MiB, openRead, openWrite, pattern, qemuRaw, readAll } from './util.js';

const dir = tempDir('platter-qcow2-read-');
let n = 0;

/** Writes at unaligned offsets, straddling clusters, zeroes, and near the end. */
function qemuWrites(path: string, size: number): void {
  must('qemu-io', [
    '-c',
    'write -P 0xab 1000 70000',
    '-c',
    `write -P 0xcd ${size - 1760} 1760`,
    '-c',
    `write -P 0x11 ${Math.floor(size / 2) - 3} 4099`,
    '-c',
    'write -z 196608 131072',
    '-c',
    `write -P 0x5a ${size - 1} 1`,
    path,
  ]);
}

async function checkAgainstQemu(path: string): Promise<Disk> {
  const want = qemuRaw(path, join(dir, `ref${n++}.raw`));
  const d = await openRead(path);
  const got = await readAll(d);
  assert.equal(d.size, want.length);
  assert.ok(got.equals(want), `${path}: platter reads what qemu-img reads`);
  const exts = await d.extents(0, d.size);
  let pos = 0;
  for (const e of exts) {
    assert.equal(e.offset, pos);
    if (e.status !== 'data') assert.ok(want.subarray(e.offset, e.offset + e.length).every((b) => b === 0));
    pos += e.length;
  }
  assert.equal(pos, d.size);
  // platter's check agrees with qemu-img's on every image qemu-img made.
  const c = await d.features.check!({ repair: 'none' });
  assert.deepEqual([c.corruptions, c.leaks], [0, 0], c.messages.join('\n'));
  return d;
}

describe('qcow2 read: images made by qemu-img', () => {
  for (const [compat, cluster, rb] of [
    ['0.10', '65536', '16'],
    ['1.1', '512', '1'],
    ['1.1', '4096', '2'],
    ['1.1', '65536', '8'],
    ['1.1', '2M', '64'],
    ['1.1', '32768', '32'],
  ]) {
    it(`compat=${compat} cluster_size=${cluster} refcount_bits=${rb}`, async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const path = join(dir, `c${compat}-${cluster}-${rb}.qcow2`);
      const size = 5 * MiB + 512;
      must('qemu-img', [
        'create',
        '-q',
        '-f',
        'qcow2',
        '-o',
        `compat=${compat},cluster_size=${cluster},refcount_bits=${rb}`,
        path,
        String(size),
      ]);
      qemuWrites(path, size);
      const d = await checkAgainstQemu(path);
      const info = await d.info();
      assert.equal(info.details?.compat, compat);
      assert.equal(info.details?.refcountBits, Number(rb));
      if (compat === '1.1' && Number(cluster) <= 65536) {
        const zero = await d.extents(196608, 131072);
        assert.deepEqual(
          zero.map((e) => e.status),
          ['zero'],
          'write -z makes zero clusters',
        );
      }
      await d.close();
    });
  }

  for (const type of ['zlib', 'zstd']) {
    for (const cluster of ['4096', '65536', '2M']) {
      it(`compressed clusters (${type}, cluster_size=${cluster})`, async (t) => {
        if (!needPeers(t, 'qemu-img')) return;
        const src = join(dir, `src-${type}-${cluster}.raw`);
        const data = new Uint8Array(3 * MiB);
        for (let i = 0; i < data.length; i += 8192)
          data.set(
            pattern(3000, i).map((b) => b & 7),
            i,
          );
        data.set(pattern(100000, 9), MiB);
        writeFileSync(src, data);
        const path = join(dir, `z-${type}-${cluster}.qcow2`);
        must('qemu-img', [
          'convert',
          '-q',
          '-c',
          '-O',
          'qcow2',
          '-o',
          `compression_type=${type},cluster_size=${cluster}`,
          src,
          path,
        ]);
        const d = await checkAgainstQemu(path);
        assert.equal((await d.info()).details?.compressionType, type);
        await d.close();
      });
    }
  }

  it('lazy refcounts and a preallocated image', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    for (const o of ['lazy_refcounts=on', 'preallocation=metadata', 'preallocation=full,cluster_size=4096']) {
      const path = join(dir, `o${n++}.qcow2`);
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', o, path, String(3 * MiB)]);
      qemuWrites(path, 3 * MiB);
      const d = await checkAgainstQemu(path);
      if (o.startsWith('lazy')) assert.equal((await d.info()).details?.lazyRefcounts, true);
      await d.close();
    }
  });

  it('a 3-deep backing chain with relative names, zero clusters hiding the backing', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'base.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(4 * MiB)]);
    must('qemu-io', ['-c', 'write -P 0x01 0 4M', base]);
    const mid = join(dir, 'mid.qcow2');
    must('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-b',
      'base.qcow2',
      '-F',
      'qcow2',
      '-o',
      'cluster_size=4096',
      mid,
    ]);
    must('qemu-io', ['-c', 'write -P 0x02 5000 10000', '-c', 'write -z 1M 64k', mid]);
    const top = join(dir, 'top.qcow2');
    // The top is larger than its backing: the tail reads zeros.
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'mid.qcow2', '-F', 'qcow2', top, String(6 * MiB)]);
    must('qemu-io', ['-c', 'write -P 0x03 7000 100', '-c', `write -P 0x04 ${5 * MiB} 512`, top]);
    const d = await checkAgainstQemu(top);
    assert.equal(d.layers.length, 3);
    const info = await d.info();
    assert.deepEqual(info.backing, { name: 'mid.qcow2', format: 'qcow2' });
    const exts = await d.extents(MiB, 65536);
    assert.deepEqual(
      exts.map((e) => [e.status, e.depth]),
      [['zero', 1]],
    );
    await d.close();
  });

  it('extended L2 entries (subclusters) over a backing file: read, not written', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'xl2-base.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', 'extended_l2=on', base, String(4 * MiB)]);
    must('qemu-io', ['-c', 'write -P 0x01 0 4M', base]);
    const top = join(dir, 'xl2-top.qcow2');
    must('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'extended_l2=on,cluster_size=32k',
      '-b',
      'xl2-base.qcow2',
      '-F',
      'qcow2',
      top,
    ]);
    must('qemu-io', [
      '-c',
      'write -P 0xab 1000 7000',
      '-c',
      'write -z 65536 1024',
      '-c',
      `write -P 3 ${4 * MiB - 4304} 4304`,
      top,
    ]);
    const d = await checkAgainstQemu(top);
    const exts = await d.extents(0, 32768);
    assert.deepEqual(
      exts.map((e) => [e.offset, e.status, e.depth]),
      [
        [0, 'data', 0],
        [8192, 'data', 1],
      ],
    );
    await d.close();
    await assert.rejects(
      openWrite(top),
      (e: unknown) => e instanceof PlatterError && e.code === 'EUNSUPPORTED',
    );
  });

  it('a missing backing file is a clear error', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const path = join(dir, 'orphan.qcow2');
    must('qemu-img', [
      'create',
      '-q',
      '-f',
      'qcow2',
      '-u',
      '-b',
      'gone.qcow2',
      '-F',
      'qcow2',
      path,
      String(MiB),
    ]);
    await assert.rejects(
      openRead(path),
      (e: unknown) => e instanceof PlatterError && /gone\.qcow2/.test(e.message),
    );
  });

  it('a backing chain that loops is a clear error', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const a = join(dir, 'loop-a.qcow2');
    const b = join(dir, 'loop-b.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', a, String(MiB)]);
    must('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', 'loop-a.qcow2', '-F', 'qcow2', b]);
    must('qemu-img', ['rebase', '-u', '-b', 'loop-b.qcow2', '-F', 'qcow2', a]);
    await assert.rejects(openRead(b), (e: unknown) => e instanceof PlatterError && /loops/.test(e.message));
  });

  it('internal snapshots made by qemu-img are listed', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'snaps.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(MiB)]);
    must('qemu-io', ['-c', 'write -P 0x07 0 64k', path]);
    must('qemu-img', ['snapshot', '-c', 'first', path]);
    must('qemu-io', ['-c', 'write -P 0x08 0 512', path]);
    const d = await checkAgainstQemu(path);
    const info = await d.info();
    assert.deepEqual(
      info.snapshots?.map((s) => [s.id, s.name, s.size]),
      [['1', 'first', MiB]],
    );
    await d.close();
  });
});
