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
