import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { closeSync, constants, openSync, readSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import {
  fallback,
  native,
  nativeUnavailableReason,
  READ_LOCK,
  UNLOCK,
  WRITE_LOCK,
} from '../../src/storage/native.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir();
const KiB = 1024;
const MiB = 1024 * KiB;

/** A 4 MiB sparse file with data at [1 MiB, 1 MiB + 128 KiB) and the last 4 KiB. */
function sparseFile(name: string): string {
  const p = join(dir, name);
  execFileSync('truncate', ['-s', '4M', p]);
  execFileSync('dd', [
    'if=/dev/urandom',
    `of=${p}`,
    'bs=64K',
    'seek=16',
    'count=2',
    'conv=notrunc',
    'status=none',
  ]);
  execFileSync('dd', [
    'if=/dev/urandom',
    `of=${p}`,
    'bs=4K',
    'seek=1023',
    'count=1',
    'conv=notrunc',
    'status=none',
  ]);
  return p;
}

function requireNative(t: { skip(msg: string): void }): boolean {
  if (native.available) return true;
  const msg = `NATIVE ADDON MISSING: ${nativeUnavailableReason} (run npm ci)`;
  if (process.env.CI && process.env.PLATTER_NO_NATIVE !== '1') throw new Error(msg);
  console.warn(msg);
  t.skip(msg);
  return false;
}

describe('native addon', () => {
  it('is loaded (built by npm ci)', (t) => {
    if (!requireNative(t)) return;
    assert.equal(native.available, true);
    assert.equal(nativeUnavailableReason, undefined);
    assert.equal(native.alignedMemory, true);
  });

  it('SEEK_DATA/SEEK_HOLE and dataRanges see the holes of a sparse file', (t) => {
    if (!requireNative(t)) return;
    const fd = openSync(sparseFile('seek.img'), 'r');
    try {
      assert.equal(native.seekData(fd, 0), 1 * MiB);
      assert.equal(native.seekHole(fd, 1 * MiB), 1 * MiB + 128 * KiB);
      assert.equal(native.seekHole(fd, 0), 0);
      assert.equal(native.seekData(fd, 2 * MiB), 4 * MiB - 4 * KiB);
      assert.equal(native.seekData(fd, 5 * MiB), -1, 'past EOF: ENXIO -> -1');
      assert.deepEqual(native.dataRanges(fd, 0, 4 * MiB, 100), [
        1 * MiB,
        1 * MiB + 128 * KiB,
        4 * MiB - 4 * KiB,
        4 * MiB,
      ]);
      // Clipped to the range asked, and limited to `max` pairs.
      assert.deepEqual(native.dataRanges(fd, 1 * MiB + 4096, 1 * MiB + 8192, 100), [
        1 * MiB + 4096,
        1 * MiB + 8192,
      ]);
      assert.deepEqual(native.dataRanges(fd, 0, 4 * MiB, 1), [1 * MiB, 1 * MiB + 128 * KiB]);
      assert.deepEqual(native.dataRanges(fd, 2 * MiB, 3 * MiB, 100), []);
    } finally {
      closeSync(fd);
    }
  });

  it('fallocate punches holes, zeroes ranges and allocates', async (t) => {
    if (!requireNative(t)) return;
    const p = join(dir, 'falloc.img');
    writeFileSync(p, Buffer.alloc(1 * MiB, 0xaa));
    const fd = openSync(p, 'r+');
    try {
      const { FALLOC_FL_PUNCH_HOLE, FALLOC_FL_KEEP_SIZE, FALLOC_FL_ZERO_RANGE } = native.constants;
      await native.fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 64 * KiB, 64 * KiB);
      await native.fallocate(fd, FALLOC_FL_ZERO_RANGE, 256 * KiB, 4 * KiB);
      const buf = Buffer.alloc(1 * MiB);
      readSync(fd, buf, 0, buf.length, 0);
      assert.ok(buf.subarray(64 * KiB, 128 * KiB).every((b) => b === 0));
      assert.ok(buf.subarray(256 * KiB, 260 * KiB).every((b) => b === 0));
      assert.equal(buf[64 * KiB - 1], 0xaa);
      assert.equal(buf[128 * KiB], 0xaa);
      assert.equal(buf[260 * KiB], 0xaa);
      assert.deepEqual(native.dataRanges(fd, 0, 1 * MiB, 10), [0, 64 * KiB, 128 * KiB, 1 * MiB]);
      assert.equal(statSync(p).size, 1 * MiB, 'KEEP_SIZE');
      await native.fallocate(fd, 0, 1 * MiB, 1 * MiB);
      assert.equal(statSync(p).size, 2 * MiB, 'allocation past EOF grows the file');
      assert.ok(statSync(p).blocks * 512 >= 1.9 * MiB);
      await assert.rejects(
        native.fallocate(-1, 0, 0, 4096),
        (e: NodeJS.ErrnoException) => e.code === 'EBADF',
      );
    } finally {
      closeSync(fd);
    }
  });

  it('OFD locks conflict between open file descriptions, even in one process', (t) => {
    if (!requireNative(t)) return;
    const p = join(dir, 'lock.img');
    writeFileSync(p, Buffer.alloc(4096));
    const a = openSync(p, 'r+');
    const b = openSync(p, 'r+');
    try {
      assert.equal(native.ofdLock(a, READ_LOCK, 100, 1), true);
      assert.equal(native.ofdTest(a, WRITE_LOCK, 100, 1), null, 'own locks never conflict');
      const holder = native.ofdTest(b, WRITE_LOCK, 100, 1);
      assert.deepEqual(holder, { type: READ_LOCK, start: 100, length: 1, pid: -1 });
      assert.equal(native.ofdTest(b, READ_LOCK, 100, 1), null, 'read locks share');
      assert.equal(native.ofdLock(b, WRITE_LOCK, 100, 1), false, 'write lock refused');
      assert.equal(native.ofdLock(b, READ_LOCK, 100, 1), true);
      assert.equal(native.ofdLock(a, UNLOCK, 100, 1), true);
      assert.equal(native.ofdTest(b, WRITE_LOCK, 100, 1), null);
      assert.notEqual(native.ofdTest(a, WRITE_LOCK, 100, 1), null);
    } finally {
      closeSync(a);
      closeSync(b);
    }
  });

  it('block device ioctls refuse a regular file; alignedBuffer serves O_DIRECT reads', (t) => {
    if (!requireNative(t)) return;
    const p = join(dir, 'direct.img');
    const data = Buffer.alloc(64 * KiB);
    for (let i = 0; i < data.length; i++) data[i] = (i * 7) & 0xff;
    writeFileSync(p, data);
    const fd = openSync(p, constants.O_RDONLY | constants.O_DIRECT);
    try {
      assert.throws(
        () => native.blockDeviceSize(fd),
        (e: NodeJS.ErrnoException) => e.code === 'ENOTTY',
      );
      assert.throws(
        () => native.logicalSectorSize(fd),
        (e: NodeJS.ErrnoException) => e.code === 'ENOTTY',
      );
      const buf = native.alignedBuffer(8192, 4096);
      assert.equal(buf.length, 8192);
      const n = readSync(fd, buf, 0, 8192, 4096);
      assert.equal(n, 8192);
      assert.ok(Buffer.from(buf).equals(data.subarray(4096, 12288)));
      assert.throws(() => native.alignedBuffer(4096, 3), RangeError);
      // Big buffers are lazy mappings: page-aligned, zeros, writable, of the size asked.
      const big = native.alignedBuffer(3 << 20, 4096);
      assert.equal(big.length, 3 << 20);
      assert.ok(big.every((b) => b === 0));
      big[big.length - 1] = 7;
      assert.equal(big[big.length - 1], 7);
    } finally {
      closeSync(fd);
    }
  });

  it('preadInto answers bytes read, or -errno for a failed read (no exception)', (t) => {
    if (!requireNative(t)) return;
    const p = join(dir, 'pread.img');
    writeFileSync(p, Buffer.from('0123456789'));
    const fd = openSync(p, 'r');
    const buf = new Uint8Array(4);
    assert.equal(native.preadInto!(fd, buf, 3), 4);
    assert.equal(Buffer.from(buf).toString(), '3456');
    assert.equal(native.preadInto!(fd, buf, 8), 2, 'short at the end');
    assert.equal(native.preadInto!(fd, buf, 100), 0, 'past the end');
    closeSync(fd);
    assert.equal(native.preadInto!(fd, buf, 0), -9, 'a closed descriptor: -EBADF');
    const d = openSync(dir, 'r');
    assert.equal(native.preadInto!(d, buf, 0), -21, 'a directory: -EISDIR');
    closeSync(d);
    assert.equal(fallback.preadInto, null);
  });

  it('setV8Flags sets V8 flags at run time (bin/platter), and takes only a short string', (t) => {
    if (!requireNative(t)) return;
    const addon = join(import.meta.dirname, '../../native/build/Release/platter.node');
    const script = `const a = require(${JSON.stringify(addon)});
      for (const bad of [5, 'x'.repeat(300)]) { try { a.setV8Flags(bad); console.log('accepted'); } catch (e) { console.log(e.name); } }
      a.setV8Flags('--trace-gc');
      const keep = []; for (let i = 0; i < 3e5; i++) keep.push({ i });`;
    const out = execFileSync(process.execPath, ['-e', script], { encoding: 'utf8' });
    const lines = out.split('\n');
    assert.deepEqual(lines.slice(0, 2), ['TypeError', 'RangeError']);
    assert.match(lines.slice(2).join('\n'), /Scavenge|Mark-Compact/, '--trace-gc took effect');
  });
});

describe('native fallback', () => {
  it('reports no holes, takes no locks, refuses fallocate', async () => {
    const fd = openSync(sparseFile('fb.img'), 'r');
    try {
      assert.equal(fallback.available, false);
      assert.equal(fallback.dataRanges(fd, 0, 4 * MiB, 10), null);
      assert.equal(fallback.seekData(fd, 123), 123);
      assert.equal(fallback.seekHole(fd, 0), 4 * MiB);
      assert.equal(fallback.ofdLock(fd, READ_LOCK, 100, 1), true);
      assert.equal(fallback.ofdTest(fd, WRITE_LOCK, 100, 1), null);
      assert.equal(fallback.blockDeviceSize(fd), 4 * MiB, 'a regular file: size from stat');
      assert.equal(fallback.alignedBuffer(4096, 4096).length, 4096);
      await assert.rejects(
        fallback.fallocate(fd, 0, 0, 1),
        (e: NodeJS.ErrnoException) => e.code === 'EOPNOTSUPP',
      );
    } finally {
      closeSync(fd);
    }
  });

  it('PLATTER_NO_NATIVE=1 selects the fallback', () => {
    const code = `import('./src/storage/native.ts').then((m) => console.log(JSON.stringify([m.native.available, m.nativeUnavailableReason])))`;
    const r = spawnSync(process.execPath, ['--import', 'tsx', '-e', code], {
      cwd: new URL('../..', import.meta.url).pathname,
      env: { ...process.env, PLATTER_NO_NATIVE: '1' },
      encoding: 'utf8',
    });
    assert.equal(r.status, 0, r.stderr);
    assert.deepEqual(JSON.parse(r.stdout.trim()), [false, 'disabled by PLATTER_NO_NATIVE=1']);
  });
});
