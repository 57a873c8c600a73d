import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { type Disk, toDisk } from '../../src/core/disk.js';
import { PlatterError } from '../../src/core/errors.js';
import type { Storage } from '../../src/core/storage.js';
import { createImage, openImage } from '../../src/formats/open.js';
import { parseRecordText, recordText } from '../../src/ops/acquire/log.js';
import { acquire, mergeRanges, readSalvaging } from '../../src/ops/acquire.js';
import { nodeHost } from '../../src/storage/host.js';
import { must, needPeers } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

/** A source that fails (EIO) every read touching a bad range, like a drive read with O_DIRECT. */
function failing(data: Uint8Array, bad: Array<[number, number]>): Storage & { reads: number } {
  const s = {
    name: 'failing',
    readOnly: true,
    reads: 0,
    async size() {
      return data.length;
    },
    async read(buf: Uint8Array, offset: number) {
      s.reads++;
      if (bad.some(([a, n]) => offset < a + n && a < offset + buf.length)) {
        throw new PlatterError('EIO', `failing: input/output error at ${offset}`);
      }
      buf.set(data.subarray(offset, offset + buf.length));
    },
    async write() {
      throw new PlatterError('EREADONLY', 'ro');
    },
    async truncate() {},
    async flush() {},
    async close() {},
  };
  return s;
}

function memDisk(size: number): Disk & { bytes: Uint8Array } {
  const bytes = new Uint8Array(size);
  const d = toDisk(
    {
      size,
      read: async (b, o) => b.set(bytes.subarray(o, o + b.length)),
      write: async (b, o) => bytes.set(b, o),
    },
    { name: 'mem', readOnly: false },
  );
  return Object.assign(d, { bytes });
}

const hex = (alg: string, b: Uint8Array): string => createHash(alg).update(b).digest('hex');

describe('acquire: bad sectors', () => {
  it('bisects a failed 4 MiB read down to the exact sectors, zero-fills them, hashes match', async () => {
    const data = randomBytes((8 << 20) + 700); // trailing partial sector kept
    const bad: Array<[number, number]> = [
      [512 * 1000, 512],
      [512 * 5000, 512 * 3],
      [(8 << 20) + 512, 188], // the partial last sector
    ];
    const src = failing(data, bad);
    const dst = memDisk(data.length);
    const r = await acquire(src, dst, {
      algorithms: ['md5', 'sha256'],
      retries: 1,
      reopen: async () =>
        toDisk(
          { size: dst.size, read: async (b, o) => b.set(dst.bytes.subarray(o, o + b.length)) },
          { name: 'mem', readOnly: true },
        ),
    });
    assert.deepEqual(
      r.unreadable,
      bad.map(([offset, length]) => ({ offset, length })),
    );
    const expect = Buffer.from(data);
    for (const [a, n] of bad) expect.fill(0, a, a + n);
    assert.ok(Buffer.from(dst.bytes).equals(expect), 'bad sectors read as zeros, the rest is copied');
    assert.equal(r.hashes.md5, hex('md5', expect));
    assert.equal(r.hashes.sha256, hex('sha256', expect));
    assert.equal(r.verification.result, 'match');
    assert.ok(r.failedReads >= 3 * 2, 'each bad sector was retried');
    assert.ok(src.reads < 200, `bisection, not sector-by-sector reading (${src.reads} reads)`);
  });

  it('readSalvaging handles an unaligned start and merges ranges', async () => {
    const data = randomBytes(8192);
    const src = failing(data, [[1024, 1]]);
    const bad: Array<{ offset: number; length: number }> = [];
    const buf = new Uint8Array(5000);
    await readSalvaging(src, buf, 100, { sectorSize: 512, retries: 0, bad, onFailedRead: () => undefined });
    assert.deepEqual(bad, [{ offset: 1024, length: 512 }]);
    assert.ok(Buffer.from(buf.subarray(0, 924)).equals(data.subarray(100, 1024)));
    assert.deepEqual(
      mergeRanges([
        { offset: 10, length: 5 },
        { offset: 0, length: 10 },
        { offset: 30, length: 1 },
      ]),
      [
        { offset: 0, length: 15 },
        { offset: 30, length: 1 },
      ],
    );
  });

  it('piecewise hashes cover every window; the log text round-trips hashes', async () => {
    const data = randomBytes(3 * 65536 + 1000);
    const r = await acquire(failing(data, []), memDisk(data.length), {
      algorithms: ['sha1'],
      hashWindow: 65536,
      blockSize: 100000,
    });
    assert.deepEqual(
      r.piecewise.map((p) => [p.offset, p.length]),
      [
        [0, 65536],
        [65536, 65536],
        [131072, 65536],
        [196608, 1000],
      ],
    );
    assert.equal(r.piecewise[2].hashes.sha1, hex('sha1', data.subarray(131072, 196608)));
    const text = recordText({
      tool: { name: 'platter', version: 't' },
      startTime: 'a',
      endTime: 'b',
      seconds: 1,
      source: { path: 's', size: data.length, sectorSize: 512, blockDevice: false },
      destination: { format: 'raw', path: 'd', files: ['d'] },
      caseMetadata: {},
      hashes: r.hashes,
      hashWindow: 65536,
      piecewise: r.piecewise,
      unreadable: [],
      unreadableBytes: 0,
      failedReads: 0,
      verification: r.verification,
      notes: [],
    });
    const back = parseRecordText(text);
    assert.deepEqual(back.hashes, r.hashes);
    assert.equal(back.size, data.length);
    assert.deepEqual(back.piecewise, r.piecewise);
  });

  it('E01 destination: error2 names exactly the bad sectors, stored MD5 is the source MD5', async (t) => {
    if (!needPeers(t, 'ewfinfo', 'ewfverify')) return;
    const dir = tempDir('platter-acq-op-');
    const data = randomBytes(2 << 20);
    data.fill(0, 1 << 20, (1 << 20) + 65536);
    const bad: Array<[number, number]> = [
      [512 * 77, 512],
      [512 * 3000, 1024],
    ];
    const path = join(dir, 'e.E01');
    await createImage(nodeHost, path, { format: 'ewf', size: data.length, options: { compression: 'fast' } });
    const dst = await openImage(nodeHost, path, { format: 'ewf', readOnly: false });
    const r = await acquire(failing(data, bad), dst, {
      algorithms: ['md5', 'sha1', 'sha256'],
      reopen: () => openImage(nodeHost, path, { readOnly: true }),
    });
    assert.equal(r.verification.result, 'match');
    assert.equal(r.hashesStored, true);
    const info = must('ewfinfo', [path]);
    assert.match(info, new RegExp(`MD5:\\s+${r.hashes.md5}`));
    assert.match(info, new RegExp(`SHA1:\\s+${r.hashes.sha1}`));
    const errs = must('ewfinfo', ['-e', path]);
    assert.match(errs, /at sector\(s\): 77 - 77 number: 1/);
    assert.match(errs, /at sector\(s\): 3000 - 3001 number: 2/);
    assert.match(must('ewfverify', ['-q', path]), /SUCCESS/);
  });
});

describe('acquire: background writeback', () => {
  /**
   * A writeback that records how many calls overlap. It finishes when the
   * destination sees its next write (so writes provably go on meanwhile) or,
   * failing that, after a short timer (the last one, when no write follows).
   */
  function slowWriteback(fail?: PlatterError) {
    const w = {
      calls: 0,
      active: 0,
      maxActive: 0,
      writesDuring: 0,
      finish: undefined as (() => void) | undefined,
    };
    const fn = async (): Promise<void> => {
      w.calls++;
      w.active++;
      w.maxActive = Math.max(w.maxActive, w.active);
      await new Promise<void>((r) => {
        w.finish = r;
        setTimeout(r, 2);
      });
      w.finish = undefined;
      w.active--;
      if (fail) throw fail;
    };
    /** Call from the destination's write. */
    const onWrite = (): void => {
      if (w.active) w.writesDuring++;
      w.finish?.();
    };
    return Object.assign(w, { fn, onWrite });
  }

  it('syncs in the background, one call at a time, while writes go on; the image and hashes are exact', async () => {
    const data = randomBytes((3 << 20) + 1536);
    const dst = memDisk(data.length);
    const wb = slowWriteback();
    const write = dst.write.bind(dst);
    dst.write = async (b, o) => {
      wb.onWrite();
      return write(b, o);
    };
    const r = await acquire(failing(data, []), dst, {
      algorithms: ['md5', 'sha1', 'sha256'],
      blockSize: 65536,
      writeback: wb.fn,
      writebackEvery: 256 << 10,
    });
    assert.ok(Buffer.from(dst.bytes).equals(data));
    assert.equal(r.hashes.md5, hex('md5', data));
    assert.equal(r.hashes.sha1, hex('sha1', data));
    assert.equal(r.hashes.sha256, hex('sha256', data));
    assert.ok(wb.calls >= 2, `writeback was called during the copy (${wb.calls} calls)`);
    assert.ok(wb.calls <= Math.ceil(data.length / (256 << 10)), `at most one call per ${256 << 10} bytes`);
    assert.equal(wb.maxActive, 1, 'never two writebacks at once');
    assert.equal(wb.active, 0, 'no writeback still running when acquire returns');
    assert.ok(wb.writesDuring > 0, 'writes went on while a writeback ran');
  });

  it('a failing writeback fails the acquisition, after every write and writeback has settled', async () => {
    const data = randomBytes(2 << 20);
    const wb = slowWriteback(new PlatterError('EIO', 'dest: fsync: input/output error'));
    let closed = false;
    const dst = memDisk(data.length);
    dst.close = async () => {
      closed = true;
    };
    await assert.rejects(
      acquire(failing(data, []), dst, {
        algorithms: ['md5'],
        blockSize: 65536,
        writeback: wb.fn,
        writebackEvery: 65536,
      }),
      /fsync: input\/output error/,
    );
    assert.equal(wb.calls, 1, 'no further writeback after one failed');
    assert.equal(wb.active, 0);
    assert.equal(closed, false, 'the destination is left to the caller (which removes it)');
  });

  it('a source error waits for the writeback in flight before rejecting', async () => {
    const data = randomBytes(2 << 20);
    const src = failing(data, []);
    const read = src.read.bind(src);
    src.read = async (b, o) => {
      if (o >= 1 << 20) throw new PlatterError('ECLOSED', 'failing: closed under us');
      return read(b, o);
    };
    let wbActive = 0;
    const r = acquire(src, memDisk(data.length), {
      algorithms: ['sha256'],
      blockSize: 65536,
      writebackEvery: 65536,
      writeback: async () => {
        wbActive++;
        await new Promise((res) => setTimeout(res, 20));
        wbActive--;
      },
    });
    await assert.rejects(r, /closed under us/);
    assert.equal(wbActive, 0, 'no writeback runs once acquire has rejected');
  });

  it('without a writeback option the destination is only flushed at the end', async () => {
    const data = randomBytes(1 << 20);
    const dst = memDisk(data.length);
    let flushes = 0;
    const flush = dst.flush.bind(dst);
    dst.flush = async () => {
      flushes++;
      return flush();
    };
    const r = await acquire(failing(data, []), dst, {
      algorithms: ['md5'],
      blockSize: 65536,
      writebackEvery: 1,
    });
    assert.equal(flushes, 1);
    assert.equal(r.hashes.md5, hex('md5', data));
  });
});
