/**
 * The synchronous file path of `platter rescue` (src/storage/sync-file.ts, chosen
 * by src/cli/commands/rescue-io.ts): reads equal the file's bytes at any offset
 * and length, buffered and direct (aligned straight into the buffer, unaligned
 * through the bounce buffer), the end of the file is one clear error, writes
 * land, and it is offered exactly for a local file or device into a raw file.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  closeSync,
  constants,
  existsSync,
  fdatasync as fsFdatasync,
  openSync,
  readFileSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { describe, it, type TestContext } from 'node:test';
import { openRescueIo } from '../../../src/cli/commands/rescue-io.js';
import { PlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { memoryStorage } from '../../../src/storage/memory.js';
import { native } from '../../../src/storage/native.js';
import { syncFileIo } from '../../../src/storage/sync-file.js';
import { tempDir } from '../../helpers/tmp.js';

const SIZE = (1 << 20) + 1000; // not a multiple of the sector

describe('rescue synchronous file I/O', () => {
  const dir = tempDir();
  const src = join(dir, 'src.img');
  const data = randomBytes(SIZE);
  writeFileSync(src, data);

  const pieces: Array<[number, number]> = [
    [0, 65536],
    [65536, 512],
    [100, 1000],
    [4095, 2],
    [SIZE - 1000, 1000],
    [SIZE - 1, 1],
    [1 << 20, 512],
    [0, SIZE],
  ];

  const directOk = (t: TestContext): boolean => {
    if (!native.alignedMemory || constants.O_DIRECT === undefined) {
      t.skip('no aligned memory or O_DIRECT here');
      return false;
    }
    try {
      closeSync(openSync(src, constants.O_RDONLY | constants.O_DIRECT));
      return true;
    } catch {
      t.skip('the temporary directory refuses O_DIRECT');
      return false;
    }
  };

  for (const direct of [false, true]) {
    it(`reads any piece exactly (${direct ? 'direct' : 'buffered'}), and the end of the file is a clear error`, (t) => {
      if (direct && !directOk(t)) return;
      const dst = join(dir, `dst-${direct}.img`);
      writeFileSync(dst, Buffer.alloc(SIZE));
      const io = syncFileIo(src, dst, { direct, sectorSize: 512, isBlockDevice: false });
      try {
        for (const [pos, len] of pieces) {
          for (const buf of [io.buffer(Math.max(len, 65536)).subarray(0, len), new Uint8Array(len)]) {
            buf.fill(0xee);
            io.read(buf, pos);
            assert.ok(Buffer.from(buf).equals(data.subarray(pos, pos + len)), `${pos}+${len}`);
          }
        }
        // Past the end: aligned (direct reads part, then finds the end) and unaligned.
        for (const [pos, len] of [
          [1 << 20, 4096],
          [SIZE - 10, 20],
          [SIZE, 512],
        ]) {
          assert.throws(
            () => io.read(io.buffer(4096).subarray(0, len), pos),
            (e: unknown) =>
              e instanceof PlatterError && e.code === 'EIO' && /unexpected end of file/.test(e.message),
          );
        }
        assert.equal(io.size?.(), SIZE);
        const w = io.buffer(65536);
        w.set(data.subarray(0, 65536));
        io.write(w, 4096);
        io.write(data.subarray(SIZE - 7), SIZE - 7);
      } finally {
        io.close();
        io.close(); // twice is harmless
      }
      const out = readFileSync(dst);
      assert.ok(out.subarray(4096, 4096 + 65536).equals(data.subarray(0, 65536)));
      assert.ok(out.subarray(SIZE - 7).equals(data.subarray(SIZE - 7)));
    });
  }

  it('flush resolves; a block device source offers no size() (its Storage keeps it)', async () => {
    const dst = join(dir, 'dst-flush.img');
    writeFileSync(dst, Buffer.alloc(16));
    const io = syncFileIo(src, dst, { direct: false, sectorSize: 512, isBlockDevice: true });
    try {
      io.write(new Uint8Array([1, 2, 3]), 5);
      await io.flush();
      assert.equal(io.size, undefined);
    } finally {
      io.close();
    }
    assert.deepEqual([...readFileSync(dst).subarray(4, 9)], [0, 1, 2, 3, 0]);
  });

  for (const direct of [false, true]) {
    it(`readSectors (${direct ? 'direct' : 'buffered'}): runs forward and backward, written at the delta, zeros left out with sparse, the end of the file a bad sector`, (t) => {
      if (direct && !directOk(t)) return;
      const f = join(dir, `sectors-${direct}.img`);
      const bytes = new Uint8Array(randomBytes(16 * 512));
      bytes.fill(0, 3 * 512, 5 * 512); // two zero sectors
      writeFileSync(f, bytes);
      const out = join(dir, `sectors-${direct}.out`);
      writeFileSync(out, new Uint8Array(32 * 512).fill(0xee));
      const io = syncFileIo(f, out, { direct, sectorSize: 512, isBlockDevice: false });
      try {
        const run = (from: number, to: number, forward: boolean, sparse = false) =>
          io.readSectors?.(from, to, 512, {
            forward,
            stopOnError: true,
            sparse,
            dstDelta: 4096,
            maxMs: 1000,
          });
        if (!native.readSectors) {
          assert.equal(io.readSectors, undefined);
          return;
        }
        assert.deepEqual(run(0, 8 * 512, true, true), {
          reached: 8 * 512,
          good: 8 * 512,
          bad: [],
          writeError: undefined,
        });
        assert.deepEqual(run(8 * 512, 16 * 512, false), {
          reached: 8 * 512,
          good: 8 * 512,
          bad: [],
          writeError: undefined,
        });
        const got = readFileSync(out);
        assert.ok(got.subarray(4096, 4096 + 3 * 512).equals(bytes.subarray(0, 3 * 512)));
        assert.ok(
          got.subarray(4096 + 3 * 512, 4096 + 5 * 512).every((b) => b === 0xee),
          'sparse: zeros not written',
        );
        assert.ok(got.subarray(4096 + 5 * 512, 4096 + 16 * 512).equals(bytes.subarray(5 * 512)));
        assert.ok(
          got.subarray(0, 4096).every((b) => b === 0xee),
          'nothing before the delta',
        );
        // Past the end: a short read is a failure that stops the run; size() then looks again.
        const past = run(14 * 512, 20 * 512, true);
        assert.deepEqual(past && { reached: past.reached, good: past.good, bad: past.bad }, {
          reached: 17 * 512,
          good: 2 * 512,
          bad: [16 * 512],
        });
        assert.equal(io.size?.(), 16 * 512);
        // A time budget of zero still makes one read.
        const one = io.readSectors?.(0, 4 * 512, 512, {
          forward: true,
          stopOnError: false,
          sparse: false,
          dstDelta: 0,
          maxMs: 0,
        });
        assert.equal(one?.reached, 512);
      } finally {
        io.close();
      }
    });
  }

  for (const forward of [true, false]) {
    it(`readSectors ${forward ? 'forward' : 'backward'}: a failed write ends the run, its reads count as not made`, (t) => {
      if (!native.readSectors || !existsSync('/dev/full')) {
        t.skip('no native addon or no /dev/full');
        return;
      }
      // /dev/full takes nothing: the first batch of good sectors fails with ENOSPC.
      const io = syncFileIo(src, '/dev/full', { direct: false, sectorSize: 512, isBlockDevice: false });
      try {
        const r = io.readSectors?.(8 * 512, 24 * 512, 512, {
          forward,
          stopOnError: false,
          sparse: false,
          dstDelta: 0,
          maxMs: 1000,
        });
        assert.ok(r?.writeError instanceof PlatterError);
        assert.match(r.writeError.message, /no space left/);
        assert.deepEqual([r.reached, r.good, r.bad], [forward ? 8 * 512 : 24 * 512, 0, []]);
      } finally {
        io.close();
      }
    });
  }

  it('native readSectors refuses parameters that are not whole sectors in order', (t) => {
    const rs = native.readSectors;
    if (!rs) {
      t.skip('no native addon');
      return;
    }
    const fd = openSync(src, 'r');
    try {
      const buf = new Uint8Array(512);
      const call = (p: number[]) => rs(fd, fd, buf, new Float64Array(p));
      assert.throws(() => call([100, 1024, 512, 0, 1, 1e6]), /whole sectors/);
      assert.throws(() => call([1024, 512, 512, 0, 1, 1e6]), RangeError);
      assert.throws(() => call([0, 1024, 1024, 0, 1, 1e6]), RangeError, 'a sector larger than the buffer');
      assert.throws(() => call([0, 1024, 0, 0, 1, 1e6]), RangeError);
      assert.throws(() => call([0, 1024, 512, 0, 1]), TypeError);
      assert.throws(() => call([-512, 1024, 512, 0, 1, 1e6]), RangeError);
    } finally {
      closeSync(fd);
    }
  });

  it('a source that shrinks reads short, and size() then tells the new size', () => {
    const f = join(dir, 'shrinking.img');
    writeFileSync(f, data);
    const io = syncFileIo(f, f, { direct: false, sectorSize: 512, isBlockDevice: false });
    try {
      assert.equal(io.size?.(), SIZE);
      truncateSync(f, 4096);
      assert.throws(() => io.read(new Uint8Array(512), 8192), /unexpected end of file/);
      assert.equal(io.size?.(), 4096);
    } finally {
      io.close();
    }
  });

  it('syncs the destination in the background every writebackBytes, one sync at a time', async () => {
    const dst = join(dir, 'dst-writeback.img');
    writeFileSync(dst, Buffer.alloc(SIZE));
    let started = 0;
    let inFlight = 0;
    let most = 0;
    const fdatasync = ((fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => {
      started++;
      most = Math.max(most, ++inFlight);
      setTimeout(
        () =>
          fsFdatasync(fd, (e) => {
            inFlight--;
            cb(e);
          }),
        5,
      );
    }) as typeof fsFdatasync;
    const io = syncFileIo(src, dst, {
      direct: false,
      sectorSize: 512,
      isBlockDevice: false,
      writebackBytes: 65536,
      fdatasync,
    });
    try {
      // Groups of 4 writes: the first starts a sync, the others find it in flight.
      for (let pos = 0; pos + 4 * 65536 <= SIZE; pos += 4 * 65536) {
        for (let k = 0; k < 4; k++)
          io.write(data.subarray(pos + k * 65536, pos + (k + 1) * 65536), pos + k * 65536);
        for (let i = 0; i < 1000 && inFlight > 0; i++) await new Promise((r) => setTimeout(r, 5));
      }
      assert.equal(started, 4, 'one sync per group of writes');
      await io.flush();
      assert.equal(most, 1, 'one sync at a time');
      assert.equal(inFlight, 0, 'flush waited for the background sync');
    } finally {
      io.close();
    }
    assert.ok(
      readFileSync(dst)
        .subarray(0, 1 << 20)
        .equals(data.subarray(0, 1 << 20)),
    );
  });

  it('a failed background sync is thrown by the next write; close under a sync in flight waits for it', async () => {
    const dst = join(dir, 'dst-syncfail.img');
    writeFileSync(dst, Buffer.alloc(SIZE));
    const failing = ((_fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => {
      const e: NodeJS.ErrnoException = new Error('EIO: i/o error, fdatasync');
      e.code = 'EIO';
      setImmediate(() => cb(e));
    }) as typeof fsFdatasync;
    const io = syncFileIo(src, dst, {
      direct: false,
      sectorSize: 512,
      isBlockDevice: false,
      writebackBytes: 512,
      fdatasync: failing,
    });
    try {
      io.write(data.subarray(0, 512), 0);
      await new Promise((r) => setImmediate(r));
      await new Promise((r) => setImmediate(r));
      assert.throws(
        () => io.write(data.subarray(0, 512), 512),
        (e: unknown) =>
          e instanceof PlatterError && e.code === 'EIO' && /dst-syncfail\.img.*fsync/.test(e.message),
      );
    } finally {
      io.close();
    }
    // A sync still running when the io is closed: the descriptor stays open until it ends.
    let done = false;
    const slow = ((fd: number, cb: (e: NodeJS.ErrnoException | null) => void) => {
      setTimeout(
        () =>
          fsFdatasync(fd, (e) => {
            done = true;
            cb(e);
          }),
        20,
      );
    }) as typeof fsFdatasync;
    const io2 = syncFileIo(src, dst, {
      direct: false,
      sectorSize: 512,
      isBlockDevice: false,
      writebackBytes: 512,
      fdatasync: slow,
    });
    io2.write(data.subarray(0, 4096), 8192);
    io2.close();
    for (let i = 0; i < 500 && !done; i++) await new Promise((r) => setTimeout(r, 10));
    assert.ok(done, 'the sync ran on the still-open descriptor');
    await new Promise((r) => setTimeout(r, 10));
    assert.ok(
      readFileSync(dst)
        .subarray(8192, 8192 + 4096)
        .equals(data.subarray(0, 4096)),
    );
  });

  it('a missing source or destination is one clear error', () => {
    assert.throws(
      () => syncFileIo(join(dir, 'nope'), src, { direct: false, sectorSize: 512, isBlockDevice: false }),
      /nope: no such file/,
    );
    assert.throws(
      () => syncFileIo(src, join(dir, 'nope2'), { direct: false, sectorSize: 512, isBlockDevice: false }),
      /nope2: no such file/,
    );
  });

  it('is offered for a file into a raw file only, and not with PLATTER_RESCUE_ASYNC=1', async (t) => {
    const raw = join(dir, 'offer.img');
    const qcow = join(dir, 'offer.qcow2');
    await createImage(nodeHost, raw, { format: 'raw', size: SIZE });
    await createImage(nodeHost, qcow, { format: 'qcow2', size: 1 << 20 });
    const s = await nodeHost.open(src, { write: false });
    const d = await openImage(nodeHost, raw, { format: 'raw', readOnly: false });
    const q = await openImage(nodeHost, qcow, { format: 'qcow2', readOnly: false });
    const saved = process.env.PLATTER_RESCUE_ASYNC;
    t.after(() => {
      if (saved === undefined) delete process.env.PLATTER_RESCUE_ASYNC;
      else process.env.PLATTER_RESCUE_ASYNC = saved;
    });
    try {
      delete process.env.PLATTER_RESCUE_ASYNC;
      const io = await openRescueIo(s, d);
      assert.ok(io, 'file into raw: offered');
      const b = io.buffer(512);
      io.read(b, 512);
      assert.ok(Buffer.from(b).equals(data.subarray(512, 1024)));
      io.close();
      assert.equal(await openRescueIo(s, q), undefined, 'into qcow2: not offered');
      assert.equal(
        await openRescueIo(memoryStorage('mem', new Uint8Array(SIZE)), d),
        undefined,
        'not a file: not offered',
      );
      process.env.PLATTER_RESCUE_ASYNC = '1';
      assert.equal(await openRescueIo(s, d), undefined, 'turned off');
    } finally {
      await q.close();
      await d.close();
      await s.close();
    }
  });
});
