/**
 * Bad input: malformed qcow2 images give a clear PlatterError (naming the
 * field and value) or correct data, never another exception, a hang, or an
 * allocation sized by an untrusted field. Explicit cases first, then a seeded
 * mutation test over images qemu-img made.
 */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { MiB, openRead, openWrite, readAll } from './util.js';

const dir = tempDir('platter-qcow2-bad-');
let n = 0;

function qemuImage(opts = 'cluster_size=65536'): Buffer {
  const p = join(dir, `src${n++}.qcow2`);
  must('qemu-img', ['create', '-q', '-f', 'qcow2', '-o', opts, p, String(MiB)]);
  must('qemu-io', ['-c', 'write -P 0x61 0 200k', '-c', 'write -P 0x62 900k 5000', p]);
  return readFileSync(p);
}

function save(b: Buffer): string {
  const p = join(dir, `m${n++}.qcow2`);
  writeFileSync(p, b);
  return p;
}

/** Open, read everything and walk the extents; returns the error, if any. */
async function exercise(path: string): Promise<unknown> {
  try {
    const d = await openRead(path);
    try {
      await readAll(d);
      await d.extents(0, d.size);
      await d.info();
      await d.features.check?.({ repair: 'none' });
    } finally {
      await d.close();
    }
    return undefined;
  } catch (e) {
    return e;
  }
}

async function expectCorrupt(b: Buffer, pattern: RegExp, code = 'ECORRUPT'): Promise<void> {
  const e = await exercise(save(b));
  assert.ok(e instanceof PlatterError, `expected a PlatterError, got ${e}`);
  assert.equal(e.code, code, e.message);
  assert.match(e.message, pattern);
}

const u64 = (b: Buffer, at: number, v: bigint): void => {
  b.writeBigUInt64BE(v, at);
};

describe('qcow2 bad input', () => {
  it('header fields: cluster_bits, size, l1_size, header_length, tables past the end or unaligned', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const good = qemuImage();
    const cases: Array<[(b: Buffer) => void, RegExp, string?]> = [
      [(b) => b.writeUInt32BE(31, 20), /cluster_bits 31/],
      [(b) => b.writeUInt32BE(8, 20), /cluster_bits 8/],
      [(b) => u64(b, 24, 1n << 45n), /l1_size 1 is too small for virtual size/],
      [(b) => u64(b, 24, 1n << 63n), /virtual size 0x8000000000000000 is too large/],
      [(b) => b.writeUInt32BE(0x7fffffff, 36), /l1_size 2147483647 exceeds the limit/],
      [(b) => u64(b, 40, 0x7fff0000n), /L1 table at 0x7fff0000\+8 is past end of file/],
      [(b) => u64(b, 40, 0x30200n), /L1 table offset 0x30200 is not aligned/],
      [(b) => u64(b, 48, 0x7fff0000n), /refcount table at 0x7fff0000.* is past end of file/],
      [(b) => b.writeUInt32BE(0x10000, 56), /refcount_table_clusters 65536 exceeds the limit/],
      [(b) => b.writeUInt32BE(0xffffffff, 100), /header_length 4294967295 is invalid/],
      [(b) => b.writeUInt32BE(100, 100), /header_length 100 is invalid/],
      [(b) => b.writeUInt32BE(1000000, 60), /nb_snapshots 1000000 exceeds/],
      [(b) => b.writeUInt32BE(5, 4), /version 5 is not supported/, 'EUNSUPPORTED'],
      [(b) => b.writeUInt32BE(1, 32), /encrypted/, 'EUNSUPPORTED'],
      [(b) => (b[79] |= 4), /external data file/, 'EUNSUPPORTED'],
      [
        (b) => {
          b[79] |= 16;
          b.writeUInt32BE(12, 20);
        },
        /extended L2 entries need cluster_bits of at least 14 \(got 12\)/,
      ],
      [(b) => (b[78] |= 4), /unknown incompatible feature bit 10/, 'EUNSUPPORTED'],
      [(b) => (b[79] |= 8), /compression type feature bit/],
      [
        (b) => {
          u64(b, 8, 0x200n);
          b.writeUInt32BE(5000, 16);
        },
        /backing_file_size 5000/,
      ],
    ];
    for (const [mutate, pattern, code] of cases) {
      const b = Buffer.from(good);
      mutate(b);
      await expectCorrupt(b, pattern, code);
    }
  });

  it('a qcow (version 1) image made by qemu-img: named as such, not called corrupt', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const path = join(dir, 'old.qcow');
    must('qemu-img', ['create', '-q', '-f', 'qcow', path, '1M']);
    await assert.rejects(
      openRead(path),
      (e) =>
        e instanceof PlatterError &&
        e.code === 'EUNSUPPORTED' &&
        /a qcow \(version 1\) image/.test(e.message),
    );
  });

  it('L2 table offsets past the end or unaligned, data clusters past the end', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const good = qemuImage();
    const l1 = Number(good.readBigUInt64BE(40));
    const l2 = Number(good.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
    let b = Buffer.from(good);
    u64(b, l1, 0x8000000007ff0000n);
    await expectCorrupt(b, /L2 table offset 0x7ff0000 \(L1 entry 0\) is past end of file/);
    b = Buffer.from(good);
    u64(b, l1, 0x8000000000030200n);
    await expectCorrupt(b, /L2 table offset 0x30200 \(L1 entry 0\) is not aligned/);
    b = Buffer.from(good);
    u64(b, l2, 0x8000000007ff0000n);
    await expectCorrupt(b, /data cluster offset 0x7ff0000 is past end of file/);
    b = Buffer.from(good);
    u64(b, l2, 0x8000000000050200n);
    await expectCorrupt(b, /data cluster offset 0x50200 is not aligned/);
  });

  it('a compressed cluster that does not inflate (zlib and zstd)', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    for (const type of ['zlib', 'zstd']) {
      const src = join(dir, `z${n++}.raw`);
      writeFileSync(src, Buffer.alloc(MiB, 'platter'));
      const path = join(dir, `z${n++}.qcow2`);
      must('qemu-img', ['convert', '-q', '-c', '-O', 'qcow2', '-o', `compression_type=${type}`, src, path]);
      const b = readFileSync(path);
      const l1 = Number(b.readBigUInt64BE(40));
      const l2 = Number(b.readBigUInt64BE(l1) & 0x00fffffffffffe00n);
      const entry = b.readBigUInt64BE(l2);
      assert.ok(entry & (1n << 62n), 'first cluster is compressed');
      const host = Number(entry & ((1n << 54n) - 1n));
      b.fill(0xff, host, host + 16);
      await expectCorrupt(b, /compressed cluster at host offset 0x[0-9a-f]+ does not decompress/);
    }
  });

  it('a truncated image: clean errors at every length', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const good = qemuImage();
    for (const len of [0, 4, 71, 72, 103, 200, 65536, 0x20000 + 7, 0x30000, 0x40000, good.length - 1]) {
      const e = await exercise(save(good.subarray(0, len)));
      assert.ok(e === undefined || e instanceof PlatterError, `length ${len}: ${e}`);
    }
  });

  it('seeded mutations of qemu-made images never crash or hang', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const bases = [
      qemuImage(),
      qemuImage('compat=0.10,cluster_size=4096'),
      qemuImage('cluster_size=512,refcount_bits=4'),
      qemuImage('extended_l2=on,cluster_size=16384'),
    ];
    let seed = 12345;
    const rnd = (k: number): number => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % k;
    };
    let errors = 0;
    let ok = 0;
    for (let i = 0; i < 100; i++) {
      const base = bases[i % bases.length];
      const b = Buffer.from(base);
      const cs = 2 ** b.readUInt32BE(20);
      // Aim at the metadata: header, then the first clusters (refcount table/block, L1, L2).
      const region = Math.min(b.length, i % 4 === 0 ? 512 : 6 * cs);
      const flips = 1 + rnd(4);
      for (let k = 0; k < flips; k++) b[rnd(region)] ^= 1 << rnd(8);
      const file = i % 11 === 0 ? b.subarray(0, rnd(b.length)) : b;
      const path = save(file);
      const outcome = await Promise.race([
        exercise(path),
        new Promise((resolve) => setTimeout(() => resolve(new Error('hang')), 10_000)),
      ]);
      if (outcome === undefined) ok++;
      else if (outcome instanceof PlatterError) errors++;
      else assert.fail(`mutation ${i}: not a PlatterError: ${(outcome as Error)?.stack ?? outcome}`);
      // Writing into a damaged image must fail cleanly too.
      if (i % 5 === 0 && outcome === undefined) {
        try {
          const d = await openWrite(path);
          try {
            await d.write(new Uint8Array(3000).fill(1), 70000);
            await d.features.check?.({ repair: 'all' });
          } finally {
            await d.close();
          }
        } catch (e) {
          if (!(e instanceof PlatterError)) assert.fail(`mutation ${i} (write): ${(e as Error)?.stack ?? e}`);
        }
      }
    }
    assert.ok(errors > 0 && ok > 0, `both outcomes occur (ok ${ok}, errors ${errors})`);
  });
});
