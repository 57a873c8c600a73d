import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { stack } from '../../../src/core/chain.js';
import { type Disk, toDisk } from '../../../src/core/disk.js';
import { PlatterError } from '../../../src/core/errors.js';
import { zeroDisk } from '../../../src/core/zeros.js';
import type { OpenContext } from '../../../src/formats/driver.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { raw } from '../../../src/formats/raw/index.js';
import { openFile } from '../../../src/storage/file.js';
import { nodeHost } from '../../../src/storage/host.js';
import { memoryStorage } from '../../../src/storage/memory.js';
import { fallback, native } from '../../../src/storage/native.js';
import { createSplit } from '../../../src/storage/split.js';
import { testDisk } from '../../conformance/disk.js';
import { needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';

const dir = tempDir();

function needNative(t: { skip(msg: string): void }): boolean {
  if (native.available) return true;
  t.skip('native addon not loaded (PLATTER_NO_NATIVE=1 or not built): no SEEK_HOLE');
  return false;
}
const KiB = 1024;
const MiB = 1024 * KiB;
let seq = 0;
const fresh = (ext = 'img'): string => join(dir, `t${seq++}.${ext}`);

const isCode = (code: string, file?: string) => (e: unknown) =>
  e instanceof PlatterError && e.code === code && (file === undefined || e.message.includes(file));

const openRaw = (path: string, readOnly: boolean): Promise<Disk> =>
  openImage(nodeHost, path, { format: 'raw', readOnly });

async function readAll(d: Disk): Promise<Buffer> {
  const b = Buffer.alloc(d.size);
  await d.read(b, 0);
  return b;
}

// ---- Conformance: raw on a file, on a split set, on memory -----------------

testDisk('raw on a sparse file', async (size) => {
  const p = fresh();
  await createImage(nodeHost, p, { format: 'raw', size });
  return { disk: await openRaw(p, false), reopen: () => openRaw(p, true), cleanup: async () => rmSync(p) };
});

testDisk('raw on a split set (1 MiB segments)', async (size) => {
  const first = fresh('001');
  const s = await createSplit(nodeHost, first, MiB);
  await s.truncate(size);
  await s.close();
  // Probed: a zero-filled set is raw.
  const disk = await openImage(nodeHost, first, { readOnly: false });
  assert.equal(disk.storages[0].files?.length, Math.ceil(size / MiB));
  return { disk, reopen: () => openRaw(first, true) };
});

testDisk('raw on a file without the native addon (fallback)', async (size) => {
  const p = fresh();
  writeFileSync(p, '');
  truncateSync(p, size);
  const make = async (readOnly: boolean): Promise<Disk> => {
    const storage = await openFile(p, { write: !readOnly }, { native: fallback });
    const { disk } = await raw.open(storage, { ...ctxFor(readOnly) });
    return stack(toDisk(disk, { name: p, readOnly }), zeroDisk(size));
  };
  return { disk: await make(false), reopen: () => make(true), cleanup: async () => rmSync(p) };
});

function ctxFor(readOnly: boolean): OpenContext {
  return {
    host: nodeHost,
    readOnly,
    forceShare: false,
    cache: 'writeback',
    options: {},
    openSibling: () => Promise.reject(new Error('no siblings')),
  };
}

testDisk('raw on memory', async (size) => {
  const mem = memoryStorage('mem', new Uint8Array(size));
  const make = async (readOnly: boolean): Promise<Disk> => {
    const { disk } = await raw.open(mem, ctxFor(readOnly));
    return stack(toDisk(disk, { name: 'mem', readOnly }), zeroDisk(size));
  };
  return { disk: await make(false), reopen: () => make(true) };
});

// ---- Sparse files, extents, zeroes ---------------------------------------------

function qemuMap(path: string): Array<[number, number, string]> {
  const out = execFileSync('qemu-img', ['map', '-f', 'raw', '--output=json', path], { encoding: 'utf8' });
  const merged: Array<[number, number, string]> = [];
  for (const e of JSON.parse(out) as Array<{ start: number; length: number; data: boolean; zero: boolean }>) {
    const status = e.data ? 'data' : 'zero';
    const prev = merged[merged.length - 1];
    if (prev && prev[2] === status) prev[1] += e.length;
    else merged.push([e.start, e.length, status]);
  }
  return merged;
}

describe('raw: sparse files against qemu-img', () => {
  it('holes of a truncate + dd file are `zero` extents, as qemu-img map says', async (t) => {
    if (!needPeers(t, 'qemu-img') || !needNative(t)) return;
    const p = fresh();
    execFileSync('truncate', ['-s', '16M', p]);
    for (const [seek, count] of [
      [0, 1],
      [300, 16],
      [2048, 3],
      [4095, 1],
    ]) {
      execFileSync('dd', [
        'if=/dev/urandom',
        `of=${p}`,
        'bs=4K',
        `seek=${seek}`,
        `count=${count}`,
        'conv=notrunc',
        'status=none',
      ]);
    }
    const d = await openImage(nodeHost, p, { readOnly: true });
    try {
      assert.equal((await d.info()).format, 'raw', 'probed as raw');
      const mine = (await d.extents(0, d.size)).map((e) => [e.offset, e.length, e.status]);
      assert.deepEqual(mine, qemuMap(p));
      assert.ok((await readAll(d)).equals(readFileSync(p)), 'reads are byte-identical to the file');
    } finally {
      await d.close();
    }
  });

  it('writeZeroes punches holes when it may unmap, else zeroes in place; discard frees', async (t) => {
    if (!native.available) {
      t.skip('no native addon: no hole punching');
      return;
    }
    const p = fresh();
    writeFileSync(p, randomBytes(4 * MiB));
    const d = await openRaw(p, false);
    const allocated = () => statSync(p).blocks * 512;
    try {
      const before = allocated();
      await d.writeZeroes(0, MiB, { mayUnmap: true });
      assert.equal(before - allocated(), MiB, 'unmapped');
      await d.writeZeroes(MiB, MiB, { mayUnmap: false });
      assert.equal(before - allocated(), MiB, 'zeroed in place: still allocated');
      await d.discard(2 * MiB, MiB);
      assert.equal(before - allocated(), 2 * MiB);
      const buf = await readAll(d);
      assert.ok(buf.subarray(0, 3 * MiB).every((b) => b === 0));
      const exts = await d.extents(0, d.size);
      assert.deepEqual(exts[exts.length - 1], { offset: 3 * MiB, length: MiB, status: 'data', depth: 0 });
      for (const e of exts.slice(0, -1)) assert.equal(e.status, 'zero');
    } finally {
      await d.close();
    }
  });

  it('qemu-io writes -> platter reads; platter writes -> qemu-io verifies the pattern', async (t) => {
    if (!needPeers(t, 'qemu-io', 'qemu-img')) return;
    const p = fresh();
    execFileSync('qemu-img', ['create', '-q', '-f', 'raw', p, '6M']);
    execFileSync('qemu-io', ['-f', 'raw', '-c', 'write -P 0xab 1000 70000', '-c', 'write -z 4096 512', p]);
    const d = await openRaw(p, false);
    try {
      const buf = Buffer.alloc(80000);
      await d.read(buf, 0);
      for (let i = 0; i < buf.length; i++) {
        const want = i >= 1000 && i < 71000 && !(i >= 4096 && i < 4608) ? 0xab : 0;
        if (buf[i] !== want) assert.fail(`byte ${i}: ${buf[i]} != ${want}`);
      }
      await d.write(Buffer.alloc(123456, 0x3c), 5 * MiB + 7);
      await d.writeZeroes(5 * MiB + 1000, 512);
      await d.flush();
    } finally {
      await d.close();
    }
    const v = run('qemu-io', [
      '-f',
      'raw',
      '-c',
      `read -P 0x3c ${5 * MiB + 7} 993`,
      '-c',
      `read -P 0 ${5 * MiB + 1000} 512`,
      '-c',
      `read -P 0x3c ${5 * MiB + 1512} ${123456 - 1505}`,
      p,
    ]);
    assert.equal(v.status, 0, v.stderr);
    assert.doesNotMatch(v.stdout, /Pattern verification failed/);
  });
});

// ---- create -o preallocation ---------------------------------------------------

describe('raw: create -o preallocation', () => {
  const size = 8 * MiB;

  for (const mode of ['off', 'falloc', 'full'] as const) {
    it(`preallocation=${mode}: allocated size as qemu-img's own, reads zeros`, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const p = fresh();
      await createImage(nodeHost, p, { format: 'raw', size, options: { preallocation: mode } });
      const q = fresh();
      execFileSync('qemu-img', ['create', '-q', '-f', 'raw', '-o', `preallocation=${mode}`, q, String(size)]);
      // Maps first: ext4 reports page-cached pages over unwritten (fallocated)
      // blocks as data once anything (qemu-img info's probe, a read) cached them.
      const theirsMap = qemuMap(q);
      const d = await openRaw(p, true);
      try {
        const mineMap = (await d.extents(0, size)).map((e) => [e.offset, e.length, e.status]);
        if (!native.available) assert.deepEqual(mineMap, [[0, size, 'data']], 'no SEEK_HOLE: all data');
        else if (mode === 'full') assert.deepEqual(mineMap, theirsMap);
        else {
          // qemu-img itself writes the first 4 KiB (for its O_DIRECT alignment probing).
          assert.deepEqual(mineMap, [[0, size, 'zero']], 'thin, or fallocated blocks that are unwritten');
          assert.deepEqual(theirsMap.slice(-1), [[4096, size - 4096, 'zero']]);
        }
        assert.ok((await readAll(d)).every((b) => b === 0));
        assert.equal(await d.storages[0].allocatedSize!(), statSync(p).blocks * 512);
      } finally {
        await d.close();
      }
      const info = (f: string) =>
        JSON.parse(execFileSync('qemu-img', ['info', '--output=json', f], { encoding: 'utf8' })) as {
          'virtual-size': number;
          'actual-size': number;
        };
      const mine = info(p);
      const theirs = info(q);
      assert.equal(mine['virtual-size'], size);
      assert.equal(statSync(p).size, size);
      assert.equal(mine['actual-size'], statSync(p).blocks * 512);
      if (mode === 'off') {
        assert.equal(mine['actual-size'], 0);
        assert.ok(theirs['actual-size'] <= 4096);
      } else {
        assert.ok(mine['actual-size'] >= size, `${mode}: allocated ${mine['actual-size']}`);
        assert.ok(theirs['actual-size'] >= size);
      }
      assert.equal(run('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', p, q]).status, 0);
    });
  }

  it('preallocation=falloc without the native addon writes zeros instead (still thick)', async () => {
    const p = fresh();
    writeFileSync(p, '');
    const storage = await openFile(p, { write: true }, { native: fallback });
    try {
      assert.equal(storage.allocate, undefined);
      await raw.create!({
        host: nodeHost,
        storage,
        size: 2 * MiB,
        options: { preallocation: 'falloc' },
        createSibling: () => Promise.reject(new Error('no siblings')),
      });
    } finally {
      await storage.close();
    }
    assert.equal(statSync(p).size, 2 * MiB);
    assert.ok(statSync(p).blocks * 512 >= 2 * MiB);
    assert.ok(readFileSync(p).every((b) => b === 0));
  });

  it('refuses unknown options and preallocation modes; nothing is left behind', async () => {
    const p = fresh();
    await assert.rejects(
      createImage(nodeHost, p, { format: 'raw', size: MiB, options: { preallocation: 'metadata' } }),
      (e: unknown) => isCode('EINVAL')(e) && /preallocation=metadata/.test((e as Error).message),
    );
    await assert.rejects(
      createImage(nodeHost, p, { format: 'raw', size: MiB, options: { cluster_size: '64k' } }),
      (e: unknown) => isCode('EINVAL')(e) && /cluster_size/.test((e as Error).message),
    );
    await assert.rejects(createImage(nodeHost, p, { format: 'raw', size: 0 }), isCode('EINVAL', p));
    assert.equal(await nodeHost.exists(p), false);
  });
});

// ---- resize --------------------------------------------------------------------

describe('raw: resize', () => {
  it('grows and shrinks a file; the new part reads zeros', async () => {
    const p = fresh();
    writeFileSync(p, Buffer.alloc(MiB, 7));
    const d = await openRaw(p, false);
    assert.ok(d.features.resize);
    await d.features.resize!(3 * MiB, { shrink: false });
    await d.close();
    assert.equal(statSync(p).size, 3 * MiB);
    const r = await openRaw(p, true);
    const buf = await readAll(r);
    await r.close();
    assert.ok(buf.subarray(0, MiB).every((b) => b === 7));
    assert.ok(buf.subarray(MiB).every((b) => b === 0));
    assert.equal(r.features.resize, undefined, 'read-only: no resize');
    const w = await openRaw(p, false);
    await w.features.resize!(1000, { shrink: true });
    await w.close();
    assert.equal(statSync(p).size, 1000);
  });

  it('a split set grows into new segments and shrinks by removing them', async () => {
    const files = [1, 2].map((i) => join(dir, `rs.00${i}`));
    for (const f of files) writeFileSync(f, Buffer.alloc(MiB, 5));
    const d = await openImage(nodeHost, files[0], { readOnly: false });
    await d.features.resize!(4 * MiB + 10, { shrink: false });
    await d.close();
    const all = [1, 2, 3, 4, 5].map((i) => join(dir, `rs.00${i}`));
    assert.deepEqual(
      all.map((f) => statSync(f).size),
      [MiB, MiB, MiB, MiB, 10],
    );
    const r = await openRaw(files[0], true);
    assert.equal(r.size, 4 * MiB + 10);
    await r.close();
    const s = await openImage(nodeHost, files[0], { readOnly: false });
    await s.features.resize!(MiB + MiB / 2, { shrink: true });
    await s.close();
    assert.equal(statSync(all[1]).size, MiB / 2);
    for (const f of all.slice(2)) assert.equal(existsSync(f), false, `${f} removed`);
  });
});

// ---- Block device ------------------------------------------------------------

describe('raw: on a block device', () => {
  it('a loop device opens as raw with the device size and reads its bytes', async (t) => {
    const backing = fresh();
    const data = randomBytes(4 * MiB);
    writeFileSync(backing, data);
    const attach = spawnSync('losetup', ['-f', '--show', backing], { encoding: 'utf8' });
    if (attach.status !== 0) {
      const msg = `LOOP DEVICE UNAVAILABLE (losetup: ${attach.stderr.trim() || attach.error?.message}); skipping`;
      console.warn(msg);
      t.skip(msg);
      return;
    }
    const dev = attach.stdout.trim();
    try {
      const d = await openImage(nodeHost, dev, { readOnly: false });
      try {
        assert.equal((await d.info()).format, 'raw');
        assert.equal(d.size, 4 * MiB);
        assert.ok((await readAll(d)).equals(data));
        await assert.rejects(
          d.features.resize!(8 * MiB, { shrink: false }),
          (e: unknown) => e instanceof PlatterError && e.code === 'EUNSUPPORTED' && e.message.includes(dev),
        );
        await d.write(Buffer.alloc(4096, 0xee), MiB);
        await d.writeZeroes(2 * MiB, 8192, { mayUnmap: true });
        await d.flush();
      } finally {
        await d.close();
      }
      const r = await openRaw(dev, true);
      const got = await readAll(r);
      await r.close();
      assert.ok(got.subarray(MiB, MiB + 4096).every((b) => b === 0xee));
      assert.ok(got.subarray(2 * MiB, 2 * MiB + 8192).every((b) => b === 0));
      assert.ok(got.subarray(0, MiB).equals(data.subarray(0, MiB)));
      assert.ok(got.subarray(2 * MiB + 8192).equals(data.subarray(2 * MiB + 8192)));
    } finally {
      spawnSync('losetup', ['-d', dev]);
    }
  });
});

// ---- Probing and bad input -----------------------------------------------------------

describe('raw: probing and bad input', () => {
  it('a file carrying another format signature is never opened as raw by probing', async () => {
    const cases: Array<[string, (b: Buffer) => void]> = [
      ['qcow2 magic', (b) => b.write('QFI\xfb', 0, 'latin1')],
      ['vhd footer at the end', (b) => b.write('conectix', b.length - 512, 'latin1')],
      ['vmdk descriptor', (b) => b.write('# Disk DescriptorFile\n', 0, 'latin1')],
      ['ewf magic', (b) => b.write('EVF\x09\x0d\x0a\xff\x00', 0, 'latin1')],
    ];
    for (const [what, poke] of cases) {
      const p = fresh();
      const b = Buffer.alloc(64 * KiB);
      poke(b);
      writeFileSync(p, b);
      let disk: Disk | undefined;
      try {
        disk = await openImage(nodeHost, p, { readOnly: true });
      } catch (e) {
        assert.ok(e instanceof PlatterError, `${what}: ${String(e)}`);
        assert.ok(e.message.includes(p), `${what}: message names the file: ${e.message}`);
        continue;
      }
      const fmt = (await disk.info()).format;
      await disk.close();
      assert.notEqual(fmt, 'raw', `${what} must not be probed as raw`);
    }
  });

  it('images qemu-img makes in any of its formats are never probed as raw', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    for (const fmt of ['qcow', 'qcow2', 'qed', 'parallels', 'vdi', 'vhdx', 'vmdk', 'vpc']) {
      const p = fresh(fmt);
      const extra = fmt === 'vpc' ? ['-o', 'subformat=fixed'] : [];
      execFileSync('qemu-img', ['create', '-q', '-f', fmt, ...extra, p, '4M']);
      let disk: Disk | undefined;
      try {
        disk = await openImage(nodeHost, p, { readOnly: true });
      } catch (e) {
        assert.ok(e instanceof PlatterError, `${fmt}: ${String(e)}`);
        assert.ok(e.message.includes(p), `${fmt}: ${e.message}`);
        continue;
      }
      const got = (await disk.info()).format;
      await disk.close();
      assert.notEqual(got, 'raw', `${fmt} probed as raw`);
    }
  });

  it('-f raw reads a file with a signature as raw bytes', async () => {
    const p = fresh();
    const b = Buffer.alloc(4096);
    b.write('QFI\xfb', 0, 'latin1');
    writeFileSync(p, b);
    const d = await openRaw(p, true);
    assert.equal((await d.info()).format, 'raw');
    assert.ok((await readAll(d)).equals(b));
    await d.close();
  });

  it('missing file, directory, zero-size image: one PlatterError naming the file', async () => {
    const missing = join(dir, 'missing.img');
    await assert.rejects(openImage(nodeHost, missing, { readOnly: true }), isCode('ENOENT', missing));
    const d = join(dir, 'a-directory');
    mkdirSync(d);
    await assert.rejects(openImage(nodeHost, d, { readOnly: true }), isCode('EINVAL', d));
    const empty = fresh();
    writeFileSync(empty, '');
    await assert.rejects(openImage(nodeHost, empty, { readOnly: true, format: 'raw' }), (e: unknown) => {
      assert.ok(e instanceof PlatterError, String(e));
      assert.ok(e.message.includes(empty) && /empty|0 bytes/.test(e.message), e.message);
      return true;
    });
    await assert.rejects(openImage(nodeHost, empty, { readOnly: true }), (e: unknown) => {
      assert.ok(e instanceof PlatterError, String(e));
      assert.ok(e.message.includes(empty), e.message);
      return true;
    });
  });

  it('split set with a missing or short middle segment: the error names the segment', async () => {
    const mk = (name: string): string[] => {
      const files = [1, 2, 3, 4].map((i) => join(dir, `${name}.00${i}`));
      for (const f of files) writeFileSync(f, Buffer.alloc(64 * KiB, 1));
      return files;
    };
    const a = mk('miss');
    rmSync(a[1]);
    await assert.rejects(openImage(nodeHost, a[0], { readOnly: true }), isCode('ENOENT', a[1]));
    const b = mk('trim');
    truncateSync(b[2], 1000);
    await assert.rejects(openImage(nodeHost, b[0], { readOnly: true }), isCode('ECORRUPT', b[2]));
  });

  it('an existing destination without force: EEXIST naming it, file untouched', async () => {
    const p = fresh();
    writeFileSync(p, 'keep me');
    await assert.rejects(createImage(nodeHost, p, { format: 'raw', size: MiB }), isCode('EEXIST', p));
    assert.equal(readFileSync(p, 'utf8'), 'keep me');
    await createImage(nodeHost, p, { format: 'raw', size: MiB, force: true });
    assert.equal(statSync(p).size, MiB);
    assert.equal(statSync(p).blocks, 0, 'recreated sparse');
  });
});
