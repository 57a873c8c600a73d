import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PlatterError } from '../../src/core/errors.js';
import { openImage } from '../../src/formats/open.js';
import { createMultiHash, hashDisk, parseAlgorithms, planLanes } from '../../src/ops/hash.js';
import { nodeHost } from '../../src/storage/host.js';
import { tempDir } from '../helpers/tmp.js';
import { arrayDisk, readAll, toyDisk } from './toy.js';

const K = 1024;
const ALL = ['md5', 'sha1', 'sha256', 'sha512'] as const;
const ref = (a: string, b: Uint8Array): string => createHash(a).update(b).digest('hex');

describe('parseAlgorithms', () => {
  it('accepts a list, any case, dashes, duplicates', () => {
    assert.deepEqual(parseAlgorithms('MD5,sha-256,md5'), ['md5', 'sha256']);
  });
  it('refuses unknown and empty', () => {
    assert.throws(() => parseAlgorithms('md5,crc32'), /unknown hash algorithm 'crc32'/);
    assert.throws(() => parseAlgorithms(','), /no hash algorithm/);
  });
});

describe('planLanes', () => {
  it('one algorithm stays on the calling thread', () => {
    assert.deepEqual(planLanes(['sha256'], 2), [['sha256']]);
  });
  it('md5 alone on one core, sha1+sha256 on the other', () => {
    const lanes = planLanes(['md5', 'sha1', 'sha256'], 2);
    assert.equal(lanes.length, 2);
    assert.ok(lanes.some((l) => l.length === 1 && l[0] === 'md5'));
  });
  it('one thread: everything inline', () => {
    assert.deepEqual(planLanes(['md5', 'sha1'], 1), [['md5', 'sha1']]);
  });
});

describe('createMultiHash', () => {
  it('random update sizes and zero runs give the same digests as node:crypto', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.record({ zero: fc.boolean(), len: fc.integer({ min: 0, max: 200 * K }) }), {
          maxLength: 8,
        }),
        fc.subarray([...ALL], { minLength: 1 }),
        fc.integer({ min: 1, max: 3 }),
        async (parts, algs, threads) => {
          const mh = createMultiHash(algs, { threads, slotSize: 64 * K, slots: 2 });
          const bufs: Uint8Array[] = [];
          for (const p of parts) {
            if (p.zero) {
              await mh.updateZeros(p.len);
              bufs.push(new Uint8Array(p.len));
            } else {
              const b = randomBytes(p.len);
              await mh.update(b);
              bufs.push(Buffer.from(b));
              b.fill(0xaa); // the caller may reuse its buffer once update() resolved
            }
          }
          const d = await mh.digest();
          const all = Buffer.concat(bufs);
          assert.deepEqual(Object.keys(d), algs);
          for (const a of algs) assert.equal(d[a], ref(a, all), a);
        },
      ),
      { numRuns: 25 },
    );
  });

  it('empty input', async () => {
    const d = await createMultiHash(['md5', 'sha256']).digest();
    assert.equal(d.md5, 'd41d8cd98f00b204e9800998ecf8427e');
    assert.equal(d.sha256, 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855');
  });

  it('abort stops the workers and later use fails', async () => {
    const mh = createMultiHash(['md5', 'sha1', 'sha256']);
    await mh.update(randomBytes(1000));
    mh.abort();
    mh.abort();
    await assert.rejects(mh.update(new Uint8Array(1)), /after digest\(\) or abort\(\)/);
  });
});

describe('hashDisk', () => {
  it('hashes holes and zeros without reading them', async () => {
    const d = toyDisk(48 * K * K + 512, 64 * K);
    await d.write(randomBytes(300 * K), 5 * K * K + 7);
    await d.writeZeroes(20 * K * K, 3 * K * K);
    await d.write(randomBytes(512), d.size - 512);
    const bytes = await readAll(d);
    d.reads.length = 0;
    const got = await hashDisk(d, ['md5', 'sha256'], { chunkSize: 128 * K });
    assert.equal(got.md5, ref('md5', bytes));
    assert.equal(got.sha256, ref('sha256', bytes));
    const readBytes = d.reads.reduce((s, [, n]) => s + n, 0);
    assert.equal(readBytes, 5 * 64 * K + 512, 'only the data clusters are read (5 + a 512-byte last one)');
  });

  it('all four algorithms on an all-data disk, with progress to the end', async () => {
    const d = arrayDisk(randomBytes(5 * K * K + 3));
    let last = 0;
    const got = await hashDisk(d, [...ALL], { chunkSize: 256 * K, onProgress: (p) => (last = p.done) });
    for (const a of ALL) assert.equal(got[a], ref(a, d.bytes));
    assert.equal(last, d.size);
  });

  it('a read error rejects (no hang) and cancellation gives ECANCELED', async () => {
    const d = arrayDisk(randomBytes(4 * K * K));
    const bad = Object.assign(Object.create(null), d, {
      read: async (_b: Uint8Array, o: number) => {
        if (o >= K * K) throw new PlatterError('EIO', 'bad: input/output error');
      },
    });
    await assert.rejects(hashDisk(bad, ['md5', 'sha1'], { chunkSize: 64 * K }), /input\/output error/);
    const ac = new AbortController();
    await assert.rejects(
      hashDisk(d, ['sha256', 'md5'], {
        chunkSize: 64 * K,
        signal: ac.signal,
        onProgress: (p) => {
          if (p.done > K * K) ac.abort();
        },
      }),
      (e: unknown) => e instanceof PlatterError && e.code === 'ECANCELED',
    );
  });
  describe('one algorithm over a host file: read on the calling thread (Storage.readSync)', () => {
    const dir = tempDir();

    it('reads every data byte with readSync, a piece at a time, and gets the same digest', async () => {
      const path = join(dir, 'sync.raw');
      const bytes = randomBytes(5 * K * K + 4099);
      writeFileSync(path, bytes);
      const disk = await openImage(nodeHost, path, { format: 'raw', readOnly: true });
      try {
        const [h] = (await disk.hostSpans(0, 1, 'read')) ?? [];
        assert.ok(h?.storage.readSync, 'a host file reads synchronously');
        const readSync = h.storage.readSync.bind(h.storage);
        const sizes: number[] = [];
        h.storage.readSync = (buf, offset) => {
          sizes.push(buf.length);
          readSync(buf, offset);
        };
        const got = await hashDisk(disk, ['sha256'], { chunkSize: 2 * K * K });
        assert.equal(got.sha256, ref('sha256', bytes));
        assert.equal(
          sizes.reduce((a, b) => a + b, 0),
          bytes.length,
          'every byte read once, on this thread',
        );
        assert.ok(Math.max(...sizes) <= 256 * K, 'in pieces that stay in the cache');
        // Several algorithms spread over workers keep the reads in the pool, ahead of the hashing.
        sizes.length = 0;
        const two = await hashDisk(disk, ['md5', 'sha1'], { threads: 2 });
        assert.equal(two.md5, ref('md5', bytes));
        assert.equal(sizes.length, 0);
      } finally {
        await disk.close();
      }
    });

    it('synchronous reads still let timers run: a cancellation lands mid-hash', async () => {
      const path = join(dir, 'cancel.raw');
      writeFileSync(path, randomBytes(64 * K * K));
      const disk = await openImage(nodeHost, path, { format: 'raw', readOnly: true });
      try {
        let hashed = 0;
        const ac = new AbortController();
        setTimeout(() => ac.abort(), 0);
        await assert.rejects(
          hashDisk(disk, ['sha256'], { signal: ac.signal, onProgress: (p) => (hashed = p.done) }),
          (e: unknown) => e instanceof PlatterError && e.code === 'ECANCELED',
        );
        assert.ok(hashed < 64 * K * K, 'stopped before the end');
      } finally {
        await disk.close();
      }
    });

    it('a failing synchronous read rejects the hash with its error', async () => {
      const path = join(dir, 'fails.raw');
      writeFileSync(path, randomBytes(4 * K * K));
      const disk = await openImage(nodeHost, path, { format: 'raw', readOnly: true });
      try {
        const [h] = (await disk.hostSpans(0, 1, 'read')) ?? [];
        assert.ok(h?.storage.readSync);
        const readSync = h.storage.readSync.bind(h.storage);
        h.storage.readSync = (buf, offset) => {
          if (offset >= 3 * K * K)
            throw new PlatterError('EIO', 'fails.raw: read at offset 3145728: input/output error');
          readSync(buf, offset);
        };
        await assert.rejects(
          hashDisk(disk, ['sha256']),
          (e: unknown) =>
            e instanceof PlatterError && e.code === 'EIO' && e.message.includes('offset 3145728'),
        );
      } finally {
        await disk.close();
      }
    });
  });
});
