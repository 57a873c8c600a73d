/**
 * platter writes, the peers judge: every image platter creates and writes is
 * clean for `qemu-img check`, identical for `qemu-img compare` with the model
 * of what was written, and opened by libqcow's qcowinfo.
 */
import assert from 'node:assert/strict';
import {
  closeSync,
  ftruncateSync,
  openSync,
  readFileSync,
  statSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { testDisk } from '../../conformance/disk.js';
import { must, needPeers, platter, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { create, MiB, openRead, openWrite, pattern, qemuCheck, readAll } from './util.js';

const dir = tempDir('platter-qcow2-write-');
/** An entry of `qemu-img map --output=json`. */
type MapEntry = { start: number; length: number; data: boolean; zero: boolean; present: boolean };
let n = 0;

/** Writes a mix (unaligned, straddling, zeroes, last byte) and returns the model. */
async function writeMix(path: string, size: number, open: Record<string, string> = {}): Promise<Uint8Array> {
  const d = await openWrite(path, open);
  const model = new Uint8Array(size);
  const w = async (off: number, data: Uint8Array): Promise<void> => {
    await d.write(data, off);
    model.set(data, off);
  };
  await w(0, new Uint8Array(MiB).fill(3));
  await w(5000, pattern(100000, 1));
  await w(size - 4096, pattern(4096, 2));
  await w(Math.floor(size / 2) - 7, pattern(70001, 3));
  await d.writeZeroes(131072, 262144);
  model.fill(0, 131072, 131072 + 262144);
  await w(7, pattern(3, 4));
  await w(size - 1, Uint8Array.of(0x5a));
  await d.close();
  return model;
}

function peersAgree(path: string, model: Uint8Array): void {
  const c = qemuCheck(path);
  assert.equal(c.status, 0, `qemu-img check is clean: ${JSON.stringify(c.json)}`);
  const raw = join(dir, `model${n++}.raw`);
  writeFileSync(raw, model);
  const cmp = run('qemu-img', ['compare', '-f', 'qcow2', '-F', 'raw', path, raw]);
  assert.equal(cmp.status, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
}

describe('qcow2 write: platter creates, qemu-img checks', () => {
  const combos = [
    'compat=0.10',
    'compat=1.1',
    'cluster_size=512,refcount_bits=1',
    'cluster_size=4096,refcount_bits=4',
    'cluster_size=2M,refcount_bits=64',
    'cluster_size=16384,refcount_bits=32',
    'refcount_bits=8,lazy_refcounts=on',
    'preallocation=metadata',
    'preallocation=falloc,cluster_size=32768',
    'preallocation=full,cluster_size=4096',
    'compression_type=zstd',
    // 64 refcounts per block, 64 blocks per table cluster: the refcount table must grow.
    'cluster_size=512,refcount_bits=64,preallocation=metadata',
  ];
  for (const o of combos) {
    it(`create -o ${o}, write, check, compare`, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const path = join(dir, `w${n++}.qcow2`);
      const size = 6 * MiB;
      const opts = Object.fromEntries(o.split(',').map((kv) => kv.split('=') as [string, string]));
      await create(path, size, opts);
      const model = await writeMix(path, size);
      peersAgree(path, model);
      const info = JSON.parse(must('qemu-img', ['info', '--output=json', path]));
      if (opts.compat) assert.equal(info['format-specific'].data.compat, opts.compat);
      if (opts.refcount_bits)
        assert.equal(info['format-specific'].data['refcount-bits'], Number(opts.refcount_bits));
      if (opts.cluster_size)
        assert.equal(info['cluster-size'], opts.cluster_size === '2M' ? 2 * MiB : Number(opts.cluster_size));
      if (opts.lazy_refcounts) {
        assert.equal(info['format-specific'].data['lazy-refcounts'], true);
        assert.equal(info['dirty-flag'], false, 'the dirty bit is cleared on close');
      }
      if (opts.preallocation === 'full')
        assert.ok(info['actual-size'] >= size, 'full preallocation is thick');
      if (opts.compression_type) assert.equal(info['format-specific'].data['compression-type'], 'zstd');
    });
  }

  for (const type of ['zlib', 'zstd']) {
    it(`compressed writes (${type}) are packed and clean`, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const path = join(dir, `cz${n++}.qcow2`);
      const size = 4 * MiB;
      // zstd also with 1-bit refcounts: no two compressed clusters may share a host cluster.
      await create(path, size, type === 'zstd' ? { compression_type: type, refcount_bits: '1' } : {});
      const d = await openWrite(path, { compress: 'on' });
      const model = new Uint8Array(size);
      const data = pattern(2 * MiB, 5).map((b) => b & 3);
      await d.write(data, 0);
      model.set(data, 0);
      await d.write(new Uint8Array(size - 3 * MiB).fill(9), 3 * MiB);
      model.fill(9, 3 * MiB);
      // A partial write over compressed data copies it into a plain cluster.
      await d.write(Uint8Array.of(1, 2, 3), 70000);
      model.set([1, 2, 3], 70000);
      await d.close();
      peersAgree(path, model);
      const c = qemuCheck(path);
      assert.ok((c.json['compressed-clusters'] as number) > 0, 'some clusters are compressed');
      const back = await openRead(path);
      assert.ok((await readAll(back)).equals(Buffer.from(model)));
      await back.close();
    });
  }

  it('an overlay on a qcow2 backing: partial writes copy whole clusters from below', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'wbase.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(2 * MiB)]);
    must('qemu-io', ['-c', 'write -P 0x33 0 2M', base]);
    const top = join(dir, 'wtop.qcow2');
    await create(top, undefined, {}, { name: 'wbase.qcow2', format: 'qcow2' });
    const d = await openWrite(top);
    await d.write(Uint8Array.of(7, 7), 65536 + 100);
    await d.close();
    const model = new Uint8Array(2 * MiB).fill(0x33);
    model.set([7, 7], 65536 + 100);
    peersAgree(top, model);
    const info = JSON.parse(must('qemu-img', ['info', '--output=json', top]));
    assert.equal(info['backing-filename'], 'wbase.qcow2');
    assert.equal(info['backing-filename-format'], 'qcow2');
    const map = JSON.parse(must('qemu-img', ['map', '--output=json', top]));
    assert.ok(map.some((m: { start: number; depth: number }) => m.start === 65536 && m.depth === 0));
  });

  it('512-byte clusters with a backing file: the header leaves out the feature name table to fit', (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'small-base.raw');
    must('qemu-img', ['create', '-q', '-f', 'raw', base, '1M']);
    must('qemu-io', ['-f', 'raw', '-c', 'write -P 0x5c 0 1M', base]);
    const top = join(dir, 'small-top.qcow2');
    const c = platter([
      'create',
      '-q',
      '-f',
      'qcow2',
      '-o',
      'cluster_size=512',
      '-b',
      'small-base.raw',
      '-F',
      'raw',
      top,
    ]);
    assert.equal(c.status, 0, c.stderr);
    must('qemu-io', ['-c', 'write -P 0x11 1000 3000', top]);
    // A longer name too (rebase -u rewrites the header); qemu-img still reads the chain.
    const longer = `${'b'.repeat(120)}.raw`;
    must('cp', [base, join(dir, longer)]);
    const r = platter(['rebase', '-u', '-b', longer, '-F', 'raw', top]);
    assert.equal(r.status, 0, r.stderr);
    const info = JSON.parse(must('qemu-img', ['info', '--output=json', top]));
    assert.equal(info['backing-filename'], longer);
    const model = new Uint8Array(MiB).fill(0x5c);
    model.fill(0x11, 1000, 4000);
    peersAgree(top, model);
    // With room to spare (64 KiB clusters) the table is there, as qemu-img writes it.
    const big = join(dir, 'table.qcow2');
    assert.equal(platter(['create', '-q', '-f', 'qcow2', big, '1M']).status, 0);
    assert.ok(
      readFileSync(big)
        .subarray(0, 4096)
        .includes(Buffer.from([0x68, 0x03, 0xf8, 0x57])),
    );
  });

  for (const compat of ['0.10', '1.1']) {
    it(`writeZeroes with mayUnmap (compat=${compat}): holes without a backing file, zeros over one`, async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const alone = join(dir, `zalone-${compat}.qcow2`);
      await create(alone, 2 * MiB, { compat });
      let d = await openWrite(alone);
      await d.write(new Uint8Array(2 * MiB).fill(5), 0);
      await d.writeZeroes(65536 + 512, 4 * 65536, { mayUnmap: true });
      await d.close();
      const model = new Uint8Array(2 * MiB).fill(5);
      model.fill(0, 65536 + 512, 5 * 65536 + 512);
      peersAgree(alone, model);
      // The three whole clusters inside went back to unallocated (freed); the edges hold zero bytes.
      const check = JSON.parse(must('qemu-img', ['check', '--output=json', alone]));
      assert.equal(check['allocated-clusters'], 32 - 3);
      const holes = (JSON.parse(must('qemu-img', ['map', '--output=json', alone])) as MapEntry[]).filter(
        (e) => !e.present,
      );
      assert.deepEqual(
        holes.map((e) => [e.start, e.length]),
        [[2 * 65536, 3 * 65536]],
      );

      // Over a backing file a hole would show its data: the clusters read zeros instead.
      const base = join(dir, `zbase-${compat}.qcow2`);
      must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', `compat=${compat}`, base, String(2 * MiB)]);
      must('qemu-io', ['-c', 'write -P 0x44 0 2M', base]);
      const top = join(dir, `ztop-${compat}.qcow2`);
      await create(top, undefined, { compat }, { name: `zbase-${compat}.qcow2`, format: 'qcow2' });
      d = await openWrite(top);
      await d.writeZeroes(65536, 3 * 65536, { mayUnmap: true });
      await d.close();
      const over = new Uint8Array(2 * MiB).fill(0x44);
      over.fill(0, 65536, 4 * 65536);
      peersAgree(top, over);
    });
  }

  it('discard unmaps whole clusters (the backing shows through again), keeps partial ones', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const base = join(dir, 'dbase.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', base, String(MiB)]);
    must('qemu-io', ['-c', 'write -P 0x44 0 1M', base]);
    const top = join(dir, 'dtop.qcow2');
    await create(top, undefined, {}, { name: 'dbase.qcow2', format: 'qcow2' });
    const d = await openWrite(top);
    await d.write(new Uint8Array(4 * 65536).fill(1), 0);
    await d.discard(1000, 2 * 65536);
    const exts = await d.extents(0, 4 * 65536);
    assert.deepEqual(
      exts.map((e) => [e.offset, e.status, e.depth]),
      [
        [0, 'data', 0],
        [65536, 'data', 1],
        [131072, 'data', 0],
      ],
    );
    await d.close();
    const model = new Uint8Array(MiB).fill(0x44);
    model.fill(1, 0, 65536);
    model.fill(1, 131072, 4 * 65536);
    peersAgree(top, model);
  });

  for (const type of ['zlib', 'zstd']) {
    it(`platter convert -c -o compression_type=${type}: qemu-img checks, compares, reads the type`, (t) => {
      if (!needPeers(t, 'qemu-img', 'qcowinfo')) return;
      const src = join(dir, `cli-${type}.raw`);
      const data = new Uint8Array(3 * MiB);
      data.set(
        pattern(MiB, 8).map((b) => b & 15),
        0,
      );
      data.set(pattern(65536, 9), 2 * MiB + 4096);
      writeFileSync(src, data);
      const dst = join(dir, `cli-${type}.qcow2`);
      const r = platter(['convert', '-c', '-O', 'qcow2', '-o', `compression_type=${type}`, src, dst]);
      assert.equal(r.status, 0, r.stderr);
      assert.equal(qemuCheck(dst).status, 0);
      assert.equal(run('qemu-img', ['compare', '-F', 'raw', dst, src]).status, 0);
      const info = JSON.parse(must('qemu-img', ['info', '--output=json', dst]));
      assert.equal(info['format-specific'].data['compression-type'], type);
      assert.ok(info['actual-size'] < MiB, 'compressed output is small');
      if (type === 'zlib') assert.equal(run('qcowinfo', [dst]).status, 0);
    });
  }

  it('convert -c of a sparse source whose data does not fill its clusters: every cluster compressed, as qemu-img', (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    // Data in 4 KiB pieces with holes between them inside each 64 KiB cluster (the
    // source's extents are finer than the clusters): each cluster is still compressed whole.
    const src = join(dir, 'holey.raw');
    const fd = openSync(src, 'w');
    for (let c = 0; c < 64; c++) {
      if (c % 32 >= 8 && c % 32 < 24) continue; // 1 MiB of holes in the middle of each 2 MiB
      writeSync(
        fd,
        pattern(4096, c).map((b) => b & 7),
        0,
        4096,
        c * 65536 + 8192,
      );
      writeSync(
        fd,
        pattern(4096, c + 100).map((b) => b & 7),
        0,
        4096,
        c * 65536 + 40960,
      );
    }
    ftruncateSync(fd, 4 * MiB);
    closeSync(fd);
    // 64 KiB clusters, and 2 MiB ones (larger than the copy's scan buffers).
    for (const cs of ['64K', '2M']) {
      const mine = join(dir, `holey-mine-${cs}.qcow2`);
      const theirs = join(dir, `holey-theirs-${cs}.qcow2`);
      const r = platter(['convert', '-c', '-O', 'qcow2', '-o', `cluster_size=${cs}`, src, mine]);
      assert.equal(r.status, 0, r.stderr);
      must('qemu-img', ['convert', '-c', '-O', 'qcow2', '-o', `cluster_size=${cs}`, src, theirs]);
      assert.equal(run('qemu-img', ['compare', '-F', 'raw', mine, src]).status, 0);
      const check = must('qemu-img', ['check', mine]);
      assert.match(check, /100\.00% compressed clusters/, `${cs}: ${check}`);
      const [a, b] = [statSync(mine).size, statSync(theirs).size];
      assert.ok(a <= b * 1.01, `${cs}: ${a} vs ${b}`);
    }
  });

  for (const compat of ['0.10', '1.1']) {
    it(`platter convert (compat=${compat}) of data with written zeros: what qemu-img allocates, no more`, (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      // All data to SEEK_DATA (no holes), with zeros written in it: long runs (after data and at
      // the start, where copies into allocated space meet them), single clusters, a zero tail.
      const src = join(dir, `zeros-in-data-${compat}.raw`);
      const data = new Uint8Array(96 * MiB);
      const put = (at: number, n: number, seed: number) => data.set(pattern(n, seed), at);
      put(24 * MiB, 20 * MiB, 1);
      for (let c = 0; c < 64; c += 3) data.fill(0, 30 * MiB + c * 65536, 30 * MiB + (c + 1) * 65536);
      put(80 * MiB + 4096, 9 * MiB, 2);
      writeFileSync(src, data);
      const ours = join(dir, `zeros-in-data-${compat}.qcow2`);
      const theirs = join(dir, `zeros-in-data-${compat}-qemu.qcow2`);
      const r = platter(['convert', '-O', 'qcow2', '-o', `compat=${compat}`, src, ours]);
      assert.equal(r.status, 0, r.stderr);
      must('qemu-img', ['convert', '-O', 'qcow2', '-o', `compat=${compat}`, src, theirs]);
      assert.equal(qemuCheck(ours).status, 0, 'qemu-img check is clean');
      assert.equal(run('qemu-img', ['compare', '-F', 'raw', ours, src]).status, 0);
      // Where data lies, as qemu-img sees it: the same clusters as in qemu-img's own output.
      const dataRanges = (path: string): string =>
        JSON.stringify(
          (JSON.parse(must('qemu-img', ['map', '--output=json', path])) as MapEntry[])
            .filter((e) => e.data)
            .map((e) => [e.start, e.length]),
        );
      assert.equal(dataRanges(ours), dataRanges(theirs));
      const check = (path: string) => JSON.parse(must('qemu-img', ['check', '--output=json', path]));
      assert.equal(check(ours)['allocated-clusters'], check(theirs)['allocated-clusters']);
    });
  }

  it('persistent bitmaps: kept by an open without changes, removed cleanly by the first write', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'bitmaps.qcow2');
    must('qemu-img', ['create', '-q', '-f', 'qcow2', path, String(4 * MiB)]);
    must('qemu-img', ['bitmap', '--add', path, 'b0']);
    must('qemu-io', ['-c', 'write -P 0x01 0 1M', path]);
    const bitmaps = (): unknown[] =>
      JSON.parse(must('qemu-img', ['info', '--output=json', path]))['format-specific'].data.bitmaps ?? [];
    assert.equal(bitmaps().length, 1);
    await (await openWrite(path)).close();
    assert.equal(bitmaps().length, 1, 'an open without changes keeps the bitmap');
    const d = await openWrite(path);
    await d.write(new Uint8Array(65536).fill(2), 0);
    await d.close();
    assert.equal(bitmaps().length, 0);
    const c = run('qemu-img', ['check', path]);
    assert.equal(c.status, 0, c.stdout + c.stderr);
    assert.doesNotMatch(c.stderr, /warning/);
  });

  it('host offsets past 2 GiB and 4 GiB (sparse metadata preallocation of 6 GiB)', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'big.qcow2');
    await create(path, 6 * 2 ** 30, { preallocation: 'metadata' });
    const d = await openWrite(path);
    const at = 5.5 * 2 ** 30 + 1000;
    await d.write(new Uint8Array(100000).fill(7), at);
    await d.close();
    assert.equal(qemuCheck(path).status, 0);
    must('qemu-io', ['-c', `read -P 7 ${at} 100000`, path]);
    const r = await openRead(path);
    const b = new Uint8Array(100002);
    await r.read(b, at - 1);
    await r.close();
    assert.deepEqual([b[0], b[1], b[100000], b[100001]], [0, 7, 7, 0]);
  });

  it('qcowinfo opens a platter-made image', async (t) => {
    if (!needPeers(t, 'qcowinfo')) return;
    const path = join(dir, 'libqcow.qcow2');
    await create(path, 4 * MiB);
    await writeMix(path, 4 * MiB);
    const r = run('qcowinfo', [path]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stdout, /Media size/);
  });

  it('kill -9 during a long write leaves at most leaks', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    for (const o of [{}, { lazy_refcounts: 'on', cluster_size: '4096' }] as Record<string, string>[]) {
      const path = join(dir, `kill${n++}.qcow2`);
      await create(path, 64 * MiB, o);
      const child = new URL('./kill-writer.ts', import.meta.url).pathname;
      const r = run(process.execPath, ['--import', 'tsx', child, path], { timeout: 30_000 });
      assert.match(r.stdout, /writing/, r.stderr);
      const c = qemuCheck(path);
      assert.ok(
        c.status === 0 || c.status === 3,
        `qemu-img check exit ${c.status}: ${JSON.stringify(c.json)}`,
      );
      assert.equal(c.json.corruptions ?? 0, 0);
      // platter repairs what is left on a writable open (dirty) or with check -r.
      const d = await openWrite(path);
      const rep = await d.features.check!({ repair: 'all' });
      await d.close();
      assert.equal(rep.corruptions + rep.leaks, 0);
      assert.equal(qemuCheck(path).status, 0);
    }
  });
});

testDisk('qcow2 alone', async (size) => {
  const path = join(dir, `conf${n++}.qcow2`);
  await create(path, Math.ceil(size / 512) * 512);
  return { disk: await openWrite(path), reopen: () => openRead(path) };
});

testDisk('qcow2 overlay on a qcow2 backing', async (size) => {
  const base = join(dir, `cbase${n}.qcow2`);
  const top = join(dir, `ctop${n++}.qcow2`);
  await create(base, Math.ceil(size / 512) * 512, { cluster_size: '4096' });
  await create(top, undefined, {}, { name: base, format: 'qcow2' });
  return { disk: await openWrite(top), reopen: () => openRead(top) };
});

testDisk('qcow2 compat=0.10 with 512-byte clusters', async (size) => {
  const path = join(dir, `conf${n++}.qcow2`);
  await create(path, Math.ceil(size / 512) * 512, { compat: '0.10', cluster_size: '512' });
  return { disk: await openWrite(path), reopen: () => openRead(path) };
});

testDisk('qcow2 opened with compress=on (zstd)', async (size) => {
  const path = join(dir, `conf${n++}.qcow2`);
  await create(path, Math.ceil(size / 512) * 512, { compression_type: 'zstd', refcount_bits: '1' });
  return { disk: await openWrite(path, { compress: 'on' }), reopen: () => openRead(path) };
});
