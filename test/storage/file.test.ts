import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { closeSync, mkdirSync, openSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PlatterError } from '../../src/core/errors.js';
import type { Storage, StorageExtent } from '../../src/core/storage.js';
import { hostError } from '../../src/storage/errors.js';
import { type FileStorage, openFile } from '../../src/storage/file.js';
import { nodeHost } from '../../src/storage/host.js';
import { fallback, native, WRITE_LOCK } from '../../src/storage/native.js';
import { holdWith, qemuIoHold, stop } from '../helpers/holder.js';
import { needPeers, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir();

/** Skips a test that needs the native addon (holes, fallocate, locks, O_DIRECT) when it is not loaded. */
function needNative(t: { skip(msg: string): void }): boolean {
  if (native.available) return true;
  t.skip('native addon not loaded (PLATTER_NO_NATIVE=1 or not built): fallback path has no such capability');
  return false;
}
const KiB = 1024;
const MiB = 1024 * KiB;

const isCode = (code: string, file?: string) => (e: unknown) =>
  e instanceof PlatterError && e.code === code && (file === undefined || e.message.includes(file));

/** A sparse file made by truncate + dd: data at the given [offset, length) pairs (multiples of 4 KiB). */
function sparse(name: string, size: number, data: Array<[number, number]>): string {
  const p = join(dir, name);
  execFileSync('truncate', ['-s', String(size), p]);
  for (const [off, len] of data) {
    execFileSync('dd', [
      'if=/dev/urandom',
      `of=${p}`,
      'bs=4096',
      `seek=${off / 4096}`,
      `count=${len / 4096}`,
      'conv=notrunc',
      'status=none',
    ]);
  }
  return p;
}

function qemuMap(path: string): StorageExtent[] {
  const out = execFileSync('qemu-img', ['map', '-f', 'raw', '--output=json', path], { encoding: 'utf8' });
  const merged: StorageExtent[] = [];
  for (const e of JSON.parse(out) as Array<{ start: number; length: number; data: boolean }>) {
    const kind = e.data ? 'data' : 'hole';
    const prev = merged[merged.length - 1];
    if (prev && prev.kind === kind) prev.length += e.length;
    else merged.push({ offset: e.start, length: e.length, kind });
  }
  return merged;
}

async function readAll(s: Storage): Promise<Buffer> {
  const buf = Buffer.alloc(await s.size());
  await s.read(buf, 0);
  return buf;
}

describe('file storage: I/O and capabilities', () => {
  it('reads and writes positionally; reading past the end is an EIO naming the file', async () => {
    const p = join(dir, 'rw.img');
    writeFileSync(p, Buffer.alloc(8192));
    const s = await openFile(p, { write: true });
    try {
      const data = randomBytes(5000);
      await s.write(data, 3000);
      const got = Buffer.alloc(5000);
      await s.read(got, 3000);
      assert.ok(got.equals(data));
      assert.equal(await s.size(), 8192);
      await s.write(Buffer.from([1]), 10000);
      assert.equal(await s.size(), 10001, 'writing past the end extends the file');
      await assert.rejects(s.read(Buffer.alloc(2), 10000), isCode('EIO', p));
      const sync = Buffer.alloc(5000);
      s.readSync?.(sync, 3000);
      assert.ok(sync.equals(data), 'readSync reads the same bytes');
      assert.throws(() => s.readSync?.(Buffer.alloc(2), 10000), isCode('EIO', p));
      await s.truncate(4096);
      assert.equal(await s.size(), 4096);
      assert.equal(statSync(p).size, 4096);
      await s.flush();
    } finally {
      await s.close();
    }
    await assert.rejects(s.read(Buffer.alloc(1), 0), isCode('ECLOSED'));
    assert.throws(() => s.readSync?.(Buffer.alloc(1), 0), isCode('ECLOSED'));
  });

  it('read-only storage refuses writes', async () => {
    const p = join(dir, 'ro.img');
    writeFileSync(p, Buffer.alloc(4096));
    const s = await openFile(p, { write: false });
    try {
      assert.equal(s.readOnly, true);
      await assert.rejects(s.write(Buffer.alloc(1), 0), isCode('EREADONLY'));
      assert.equal(s.discard, undefined);
    } finally {
      await s.close();
    }
  });

  it('extents from SEEK_HOLE agree with qemu-img map on sparse files made with truncate + dd', async (t) => {
    if (!needPeers(t, 'qemu-img') || !needNative(t)) return;
    const cases: Array<[string, number, Array<[number, number]>]> = [
      ['all-hole.img', 4 * MiB, []],
      [
        'mixed.img',
        8 * MiB,
        [
          [0, 4096],
          [1 * MiB, 64 * KiB],
          [3 * MiB + 8192, 12 * KiB],
          [8 * MiB - 4096, 4096],
        ],
      ],
      ['full.img', 1 * MiB, [[0, 1 * MiB]]],
      ['odd-tail.img', 2 * MiB + 1000, [[1 * MiB, 4096]]],
    ];
    for (const [name, size, data] of cases) {
      const p = sparse(name, size, data);
      const s = await openFile(p, { write: false });
      try {
        assert.ok(s.extents, 'regular files have extents');
        const mine = await s.extents!(0, size);
        // qemu-img rounds a raw file's size up to 512 bytes: clip its map to the file.
        const theirs = qemuMap(p);
        const last = theirs[theirs.length - 1];
        last.length = size - last.offset;
        assert.deepEqual(mine, theirs, name);
        // A sub-range is clipped exactly.
        const sub = await s.extents!(1 * MiB - 100, 200);
        assert.equal(
          sub.reduce((a, e) => a + e.length, 0),
          200,
        );
        assert.equal(sub[0].offset, 1 * MiB - 100);
      } finally {
        await s.close();
      }
    }
  });

  it('a locked reader answers extents inside its last query from memory, exactly as the file says', async (t) => {
    if (!needNative(t)) return;
    const size = 8 * MiB;
    const p = sparse('memo.img', size, [
      [0, 4096],
      [1 * MiB, 64 * KiB],
      [3 * MiB + 8192, 12 * KiB],
      [8 * MiB - 4096, 4096],
    ]);
    const memo = await openFile(p, { write: false });
    const fresh = await openFile(p, { write: false, lock: 'none' }); // -U: asks the file every time
    try {
      await memo.extents!(0, size);
      await fc.assert(
        fc.asyncProperty(
          fc
            .integer({ min: 0, max: size - 1 })
            .chain((a) => fc.tuple(fc.constant(a), fc.integer({ min: 1, max: size - a }))),
          async ([offset, length]) => {
            const got = await memo.extents!(offset, length);
            assert.deepEqual(got, await fresh.extents!(offset, length));
            got[0].length = 0; // a caller's change to its answer does not reach the next one
          },
        ),
        { numRuns: 300 },
      );
      // A query past the last one is asked of the file, and becomes the new memo.
      assert.deepEqual(await memo.extents!(1 * MiB, 64 * KiB), [
        { offset: 1 * MiB, length: 64 * KiB, kind: 'data' },
      ]);
      assert.deepEqual(await memo.extents!(1 * MiB + 4096, 4096), [
        { offset: 1 * MiB + 4096, length: 4096, kind: 'data' },
      ]);
      // A writer that ignores locks fills a hole: a moment later the reader sees it.
      await memo.extents!(0, size);
      const writer = await openFile(p, { write: true, lock: 'none' });
      try {
        await writer.write(new Uint8Array(4096).fill(1), 5 * MiB);
        await writer.flush();
      } finally {
        await writer.close();
      }
      await new Promise((r) => setTimeout(r, 1100)); // the memo lasts one second (MEMO_MS)
      assert.deepEqual(await memo.extents!(5 * MiB, 4096), [{ offset: 5 * MiB, length: 4096, kind: 'data' }]);
    } finally {
      await memo.close();
      await fresh.close();
    }
  });

  it('discard punches a hole, zeroRange keeps space, allocate reserves it', async (t) => {
    if (!needNative(t)) return;
    const p = join(dir, 'caps.img');
    writeFileSync(p, randomBytes(1 * MiB));
    const s = await openFile(p, { write: true });
    try {
      assert.ok(s.discard && s.zeroRange && s.allocate && s.allocatedSize);
      const before = await s.allocatedSize!();
      await s.discard!(256 * KiB, 256 * KiB);
      const afterDiscard = await s.allocatedSize!();
      assert.equal(before - afterDiscard, 256 * KiB, 'punched blocks are freed');
      await s.zeroRange!(0, 64 * KiB);
      const buf = await readAll(s);
      assert.ok(buf.subarray(0, 64 * KiB).every((b) => b === 0));
      assert.ok(buf.subarray(256 * KiB, 512 * KiB).every((b) => b === 0));
      assert.deepEqual(
        (await s.extents!(0, 1 * MiB)).map((e) => [e.offset, e.length, e.kind]),
        [
          [0, 256 * KiB, 'data'],
          [256 * KiB, 256 * KiB, 'hole'],
          [512 * KiB, 512 * KiB, 'data'],
        ],
      );
      await s.allocate!(1 * MiB, 3 * MiB);
      assert.equal(await s.size(), 4 * MiB);
      assert.ok((await s.allocatedSize!()) >= afterDiscard + 3 * MiB);
      const tail = Buffer.alloc(3 * MiB, 1);
      await s.read(tail, 1 * MiB);
      assert.ok(
        tail.every((b) => b === 0),
        'allocated space reads zeros',
      );
    } finally {
      await s.close();
    }
  });

  it('O_DIRECT reads at unaligned offsets and lengths through a bounce buffer', async (t) => {
    if (!needNative(t)) return;
    const p = join(dir, 'direct.img');
    const data = randomBytes(3 * MiB + 100);
    writeFileSync(p, data);
    const s = await openFile(p, { write: false, direct: true });
    try {
      assert.equal(s.direct, true, 'ext4 allows O_DIRECT');
      for (const [off, len] of [
        [0, 512],
        [1, 1],
        [511, 2],
        [4095, 1 * MiB + 7],
        [100, 2 * MiB + 3000],
        [data.length - 33, 33],
      ]) {
        const got = Buffer.alloc(len);
        await s.read(got, off);
        assert.ok(got.equals(data.subarray(off, off + len)), `direct read ${off}+${len}`);
      }
      await assert.rejects(s.read(Buffer.alloc(200), data.length - 100), isCode('EIO', p));
    } finally {
      await s.close();
    }
  });

  it('close waits for the calls in flight: a read of several O_DIRECT chunks and a copy finish first', async (t) => {
    if (!needNative(t)) return;
    const p = join(dir, 'inflight.img');
    const data = randomBytes(8 * MiB);
    writeFileSync(p, data);
    // Eight 1 MiB preads one after another: all but the first start after close() was called.
    const s = await openFile(p, { write: false, direct: true });
    const got = Buffer.alloc(data.length);
    const reading = s.read(got, 0);
    await s.close();
    await reading;
    assert.ok(got.equals(data), 'the read started before close got every byte');
    await assert.rejects(s.read(Buffer.alloc(1), 0), isCode('ECLOSED'), 'and later calls are refused');

    // A store-to-store copy holds both descriptors open until it ends.
    const src = await openFile(p, { write: false });
    const q = join(dir, 'inflight-copy.img');
    writeFileSync(q, '');
    const dst = await openFile(q, { write: true });
    const copier = dst.copierFrom?.(src);
    assert.ok(copier, 'file to file copier');
    const copying = copier([{ from: 0, to: 0, length: data.length }], 4096);
    await Promise.all([src.close(), dst.close()]);
    const r = await copying;
    assert.equal(r.written, data.length);
    assert.ok(readFileSync(q).equals(data), 'the copy is whole');
  });

  it('without the native addon: no holes, no discard, plain I/O still works', async () => {
    const p = sparse('fallback.img', 2 * MiB, [[1 * MiB, 4096]]);
    const s = await openFile(p, { write: true, direct: true }, { native: fallback });
    try {
      assert.equal(s.extents, undefined);
      assert.equal(s.discard, undefined);
      assert.equal(s.allocate, undefined);
      assert.equal(s.direct, false);
      const data = randomBytes(1000);
      await s.write(data, 5);
      const got = Buffer.alloc(1000);
      await s.read(got, 5);
      assert.ok(got.equals(data));
      // No locks were taken.
      const fd = openSync(p, 'r');
      try {
        if (native.available) assert.equal(native.ofdTest(fd, WRITE_LOCK, 100, 1), null);
      } finally {
        closeSync(fd);
      }
    } finally {
      await s.close();
    }
  });
});

describe('file storage: bad input', () => {
  it('a missing file is ENOENT naming it', async () => {
    const p = join(dir, 'nope.img');
    await assert.rejects(openFile(p, { write: false }), isCode('ENOENT', p));
    await assert.rejects(nodeHost.open(p, { write: false }), isCode('ENOENT', p));
  });

  it('a directory is EINVAL naming it', async () => {
    const d = join(dir, 'adir');
    mkdirSync(d);
    await assert.rejects(nodeHost.open(d, { write: false }), isCode('EINVAL', d));
    await assert.rejects(nodeHost.create(d, { force: true }), isCode('EINVAL', d));
  });

  it('a path through a file is ENOENT naming it; host errno codes map to PlatterErrors', async () => {
    const f = join(dir, 'plain.img');
    writeFileSync(f, 'x');
    await assert.rejects(
      nodeHost.open(join(f, 'inner.img'), { write: false }),
      isCode('ENOENT', 'plain.img/inner'),
    );
    const table: Array<[string, string]> = [
      ['ENOENT', 'ENOENT'],
      ['EEXIST', 'EEXIST'],
      ['EACCES', 'EIO'],
      ['EISDIR', 'EINVAL'],
      ['ENOSPC', 'ENOSPC'],
      ['EDQUOT', 'ENOSPC'],
      ['EIO', 'EIO'],
      ['EAGAIN', 'ELOCKED'],
      ['EBUSY', 'EIO'],
      ['EROFS', 'EIO'],
      ['EWHATEVER', 'EIO'],
    ];
    for (const [errno, code] of table) {
      const e = Object.assign(new Error(errno), { code: errno });
      const got = hostError(e, '/some/file.img', 'read at offset 0');
      assert.ok(got instanceof PlatterError && got.code === code, `${errno} -> ${String(got)}`);
      assert.ok(got.message.startsWith('/some/file.img: '), got.message);
    }
    const bug = new TypeError('not a host error');
    assert.equal(hostError(bug, 'x'), bug, 'our bugs are not disguised');
  });

  it('a character device is refused', async () => {
    await assert.rejects(nodeHost.open('/dev/null', { write: false }), isCode('EINVAL', '/dev/null'));
  });

  it('an existing destination without force is EEXIST; force empties it after locking', async () => {
    const p = join(dir, 'exists.img');
    writeFileSync(p, Buffer.alloc(4096, 7));
    await assert.rejects(nodeHost.create(p, {}), isCode('EEXIST', p));
    assert.equal(statSync(p).size, 4096, 'untouched');
    const s = await nodeHost.create(p, { force: true });
    assert.equal(await s.size(), 0);
    await s.close();
    assert.equal(statSync(p).size, 0);
    const q = join(dir, 'new.img');
    const n = await nodeHost.create(q, {});
    await n.write(Buffer.from('x'), 0);
    await n.close();
    assert.equal(readFileSync(q, 'utf8'), 'x');
  });

  it('create --force on an image another process holds is refused and leaves it intact', async (t) => {
    if (!needNative(t)) return;
    const p = join(dir, 'held.img');
    writeFileSync(p, Buffer.alloc(4096, 9));
    const holder = await openFile(p, { write: false });
    try {
      await assert.rejects(nodeHost.create(p, { force: true }), isCode('ELOCKED', p));
      assert.equal(statSync(p).size, 4096, 'not truncated');
    } finally {
      await holder.close();
    }
  });
});

// ---- Locking, against QEMU's own tools -----------------------------------

describe('file storage: QEMU-compatible locking', () => {
  const image = (name: string): string => {
    const p = join(dir, name);
    writeFileSync(p, Buffer.alloc(1 * MiB, 0x5a));
    return p;
  };

  it('while platter writes, qemu-io cannot write and qemu-img info fails (-U works)', async (t) => {
    if (!needPeers(t, 'qemu-io', 'qemu-img') || !needNative(t)) return;
    const p = image('platter-writes.img');
    // qemu-img info takes no lock at all on a raw image (it needs no I/O), so
    // its refusal is checked on a qcow2 file, which platter's Storage holds alike.
    const q = join(dir, 'platter-writes.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', q, '1M']);
    const s = await openFile(p, { write: true });
    const sq = await openFile(q, { write: true });
    try {
      const w = run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', p]);
      assert.notEqual(w.status, 0);
      assert.match(w.stderr, /Failed to get "write" lock\nIs another process using the image/);
      const r = run('qemu-io', ['-r', '-f', 'qcow2', '-c', 'read 0 512', q]);
      assert.notEqual(r.status, 0, 'a qcow2 reader does not share writing');
      const info = run('qemu-img', ['info', q]);
      assert.notEqual(info.status, 0);
      assert.match(info.stderr, /Failed to get shared "write" lock/);
      const shared = run('qemu-img', ['info', '-U', q]);
      assert.equal(shared.status, 0, shared.stderr);
      const ur = run('qemu-io', ['-r', '-U', '-f', 'raw', '-c', 'read 0 512', p]);
      assert.equal(ur.status, 0, ur.stderr);
    } finally {
      await s.close();
      await sq.close();
    }
    // Released on close.
    const after = run('qemu-io', ['-f', 'raw', '-c', 'write -P 1 0 512', p]);
    assert.equal(after.status, 0, after.stderr);
    assert.equal(run('qemu-img', ['info', q]).status, 0);
  });

  it('while platter reads, qemu-io cannot write but qemu-img info can read', async (t) => {
    if (!needPeers(t, 'qemu-io', 'qemu-img') || !needNative(t)) return;
    const p = image('platter-reads.img');
    const s = await openFile(p, { write: false });
    try {
      const w = run('qemu-io', ['-f', 'raw', '-c', 'write 0 512', p]);
      assert.notEqual(w.status, 0);
      assert.match(w.stderr, /Failed to get "write" lock/);
      const info = run('qemu-img', ['info', '-f', 'raw', p]);
      assert.equal(info.status, 0, info.stderr);
    } finally {
      await s.close();
    }
  });

  for (const peer of ['qemu-io', 'qemu-nbd'] as const) {
    it(`while ${peer} holds the image writable, platter's opens are refused and -U reads`, async (t) => {
      if (!needPeers(t, peer) || !needNative(t)) return;
      const p = image(`${peer}-holds.img`);
      const args = peer === 'qemu-io' ? qemuIoHold(p) : ['-f', 'raw', '-k', join(dir, `${peer}.sock`), p];
      const child = await holdWith(peer, args, p);
      try {
        await assert.rejects(openFile(p, { write: true }), (e: unknown) => {
          assert.ok(e instanceof PlatterError && e.code === 'ELOCKED');
          assert.match(e.message, /is in use by another process \(locked.*\); use -U to read it anyway/);
          assert.ok(e.message.startsWith(p));
          return true;
        });
        await assert.rejects(openFile(p, { write: false }), isCode('ELOCKED', p));
        const u = await openFile(p, { write: false, lock: 'none' });
        try {
          const buf = Buffer.alloc(512);
          await u.read(buf, 0);
          assert.ok(buf.every((b) => b === 0x5a));
        } finally {
          await u.close();
        }
      } finally {
        await stop(child);
      }
      const again = await openFile(p, { write: true });
      await again.close();
    });
  }

  it('two platter readers coexist; a writer excludes readers and writers in one process', async (t) => {
    if (!native.available) {
      t.skip('no native addon: no locks');
      return;
    }
    const p = image('inproc.img');
    const r1 = await openFile(p, { write: false });
    const r2 = await openFile(p, { write: false });
    await assert.rejects(openFile(p, { write: true }), isCode('ELOCKED', p));
    await r1.close();
    await assert.rejects(openFile(p, { write: true }), isCode('ELOCKED', p));
    await r2.close();
    const w = await openFile(p, { write: true });
    await assert.rejects(openFile(p, { write: true }), isCode('ELOCKED', p));
    await assert.rejects(openFile(p, { write: false }), isCode('ELOCKED', p));
    const u = await openFile(p, { write: false, lock: 'none' });
    await u.close();
    await w.close();
    const r3 = await openFile(p, { write: false });
    await r3.close();
  });
});

// ---- Block devices: a loop device -----------------------------------------

describe('file storage: block device (loop)', () => {
  it('size via ioctl, O_DIRECT reads, never truncated as a destination', async (t) => {
    const backing = join(dir, 'loop-backing.img');
    const data = randomBytes(8 * MiB);
    writeFileSync(backing, data);
    const attach = spawnSync('losetup', ['-f', '--show', '--sector-size', '4096', backing], {
      encoding: 'utf8',
    });
    if (attach.status !== 0) {
      const msg = `LOOP DEVICE UNAVAILABLE (losetup: ${attach.stderr.trim() || attach.error?.message}); skipping`;
      console.warn(msg);
      t.skip(msg);
      return;
    }
    const dev = attach.stdout.trim();
    try {
      assert.equal(statSync(dev).size, 0, 'stat says 0 for a block device');
      const s: FileStorage = await openFile(dev, { write: false, direct: true });
      try {
        assert.equal(s.isBlockDevice, true);
        assert.equal(await s.size(), 8 * MiB);
        if (native.available) {
          assert.equal(s.sectorSize, 4096);
          assert.equal(s.direct, true);
        }
        for (const [off, len] of [
          [0, 4096],
          [1, 10],
          [4095, 2],
          [12345, 1 * MiB + 17],
          [8 * MiB - 5, 5],
        ]) {
          const got = Buffer.alloc(len);
          await s.read(got, off);
          assert.ok(got.equals(data.subarray(off, off + len)), `read ${off}+${len}`);
        }
        assert.equal(s.extents, undefined, 'a device is all data');
      } finally {
        await s.close();
      }
      // Fallback path: size from sysfs, not stat.
      const f = await openFile(dev, { write: false }, { native: fallback });
      assert.equal(await f.size(), 8 * MiB);
      await f.close();

      await assert.rejects(nodeHost.create(dev, {}), isCode('EEXIST', dev));
      const w = await nodeHost.create(dev, { force: true });
      try {
        assert.equal(await w.size(), 8 * MiB, 'not truncated');
        await w.write(Buffer.from('platter'), 4096);
        await assert.rejects(w.write(Buffer.alloc(10), 8 * MiB - 5), isCode('ENOSPC', dev));
        await assert.rejects(w.truncate(9 * MiB), isCode('ENOSPC', dev));
        await w.truncate(4 * MiB); // a device keeps its size
        assert.equal(await w.size(), 8 * MiB);
        await w.flush();
      } finally {
        await w.close();
      }
      const r = await nodeHost.open(dev, { write: false });
      const head = Buffer.alloc(8 * MiB);
      await r.read(head, 0);
      await r.close();
      assert.equal(head.subarray(4096, 4103).toString(), 'platter');
      assert.ok(head.subarray(0, 4096).equals(data.subarray(0, 4096)), 'the rest is untouched');
      assert.ok(head.subarray(4103).equals(data.subarray(4103)));
    } finally {
      spawnSync('losetup', ['-d', dev]);
    }
  });
});
