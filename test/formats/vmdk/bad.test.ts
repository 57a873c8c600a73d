/** check() and bad input: every outcome is a clear PlatterError, never a crash or a hang. */
import assert from 'node:assert/strict';
import { copyFileSync, readFileSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import type { Disk } from '../../../src/core/disk.js';
import { PlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { MiB, qemuWrite } from './util.js';

const dir = tempDir('platter-vmdk-bad-');

function patch(path: string, at: number, bytes: Buffer): void {
  const b = readFileSync(path);
  bytes.copy(b, at);
  writeFileSync(path, b);
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

function u64(n: bigint): Buffer {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(n);
  return b;
}

/** A 16 MiB monolithicSparse with 4 MiB of data, and where its first GT is. */
function sparseImage(name: string): { path: string; gt: number; rgt: number } {
  const path = join(dir, name);
  must('qemu-img', ['create', '-q', '-f', 'vmdk', path, '16M']);
  qemuWrite(path, [[0, 4 * MiB, 0x42]]);
  const b = readFileSync(path);
  const gd = Number(b.readBigUInt64LE(56)) * 512;
  const rgd = Number(b.readBigUInt64LE(48)) * 512;
  return { path, gt: b.readUInt32LE(gd) * 512, rgt: b.readUInt32LE(rgd) * 512 };
}

async function rejects(p: Promise<unknown>, code: string, re: RegExp): Promise<void> {
  await assert.rejects(p, (e: unknown) => {
    assert.ok(e instanceof PlatterError, `a PlatterError, got ${String(e)}`);
    assert.equal(e.code, code, e.message);
    assert.match(e.message, re);
    return true;
  });
}

const openRO = (path: string): Promise<Disk> => openImage(nodeHost, path, { readOnly: true });

async function checkOf(path: string): Promise<{ corruptions: number; messages: string[] }> {
  const disk = await openRO(path);
  try {
    assert.ok(disk.features.check);
    return await disk.features.check({ repair: 'none' });
  } finally {
    await disk.close();
  }
}

describe('vmdk check', () => {
  it('a qemu-made image is clean', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path } = sparseImage('clean.vmdk');
    const r = await checkOf(path);
    assert.deepEqual(r.messages, []);
    assert.equal(r.corruptions, 0);
  });

  it('a GTE past the end of the file is found (qemu-img check agrees)', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path, gt, rgt } = sparseImage('past.vmdk');
    patch(path, gt + 4 * 3, u32(0x100000));
    patch(path, rgt + 4 * 3, u32(0x100000));
    const r = await checkOf(path);
    assert.equal(r.corruptions, 1);
    assert.match(r.messages[0], /grain 3 at sector 1048576 is past end of file/);
    assert.notEqual(run('qemu-img', ['check', path]).status, 0);
    const disk = await openRO(path);
    try {
      await rejects(disk.read(new Uint8Array(512), 3 * 65536), 'ECORRUPT', /past end of file/);
    } finally {
      await disk.close();
    }
  });

  it('overlapping grains and a redundant GT that disagrees are found', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path, gt, rgt } = sparseImage('overlap.vmdk');
    const b = readFileSync(path);
    const g5 = b.readUInt32LE(gt + 4 * 5);
    patch(path, gt + 4 * 6, u32(g5 + 8)); // grain 6 starts inside grain 5
    const r = await checkOf(path);
    assert.ok(
      r.messages.some((m) => /grain 5 \(sector \d+\) and grain 6 \(sector \d+\) overlap/.test(m)),
      r.messages.join('\n'),
    );
    assert.ok(
      r.messages.some((m) => /entry 6 is \d+ but \d+ in the redundant grain table/.test(m)),
      r.messages.join('\n'),
    );
    void rgt;
  });
});

describe('vmdk check -r all', () => {
  it('repairs GTEs past the end (from the redundant GT when it has them) and a stale redundant GT; qemu-img check is clean after', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const { path, gt, rgt } = sparseImage('repair.vmdk');
    patch(path, gt + 4 * 3, u32(0x100000)); // GT and RGT: past the end
    patch(path, rgt + 4 * 3, u32(0x100000));
    patch(path, rgt + 4 * 5, u32(7)); // RGT only: disagrees
    patch(path, gt + 4 * 4, u32(0x200000)); // GT only past the end: the RGT still knows the grain
    assert.notEqual(run('qemu-img', ['check', path]).status, 0);
    const disk = await openImage(nodeHost, path, { readOnly: false });
    try {
      const r = await disk.features.check?.({ repair: 'all' });
      assert.deepEqual(r?.repaired, { corruptions: 3, leaks: 0 });
      assert.equal(r?.corruptions, 0, r?.messages.join('\n'));
    } finally {
      await disk.close();
    }
    assert.deepEqual((await checkOf(path)).messages, []);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
    const ro = await openRO(path);
    try {
      const b = new Uint8Array(2);
      await ro.read(b, 3 * 65536);
      assert.deepEqual([...b], [0, 0], 'the repaired grain reads as a hole');
      await ro.read(b, 5 * 65536);
      assert.deepEqual([...b], [0x42, 0x42]);
      await ro.read(b, 4 * 65536);
      assert.deepEqual([...b], [0x42, 0x42], 'restored from the redundant grain table');
    } finally {
      await ro.close();
    }
  });
});

describe('vmdk missing grain tables', () => {
  it('a GD entry of 0 reads as a hole, and a write there allocates the GT (and its redundant copy)', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = join(dir, 'nogt.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', path, '96M']); // three GTs
    const b = readFileSync(path);
    const gd = Number(b.readBigUInt64LE(56)) * 512;
    const rgd = Number(b.readBigUInt64LE(48)) * 512;
    patch(path, gd + 4, u32(0)); // GT 1 (32..64 MiB) absent in both directories
    patch(path, rgd + 4, u32(0));
    let disk = await openRO(path);
    try {
      assert.deepEqual(
        (await disk.extents(0, disk.size)).map((e) => e.status),
        ['hole'],
      );
    } finally {
      await disk.close();
    }
    disk = await openImage(nodeHost, path, { readOnly: false });
    try {
      await disk.write(new Uint8Array(65536).fill(0x51), 40 * MiB);
    } finally {
      await disk.close();
    }
    const after = readFileSync(path);
    assert.notEqual(after.readUInt32LE(gd + 4), 0, 'GD entry set');
    assert.notEqual(after.readUInt32LE(rgd + 4), 0, 'RGD entry set');
    assert.deepEqual((await checkOf(path)).messages, []);
    assert.equal(run('qemu-img', ['check', path]).status, 0);
    const raw = join(dir, 'nogt.raw');
    must('qemu-img', ['convert', '-O', 'raw', path, raw]);
    const r = readFileSync(raw);
    assert.equal(r[40 * MiB], 0x51);
    assert.equal(r[40 * MiB - 1], 0);
  });
});

describe('vmdk bad input', () => {
  const desc = (lines: string[]): string => `${lines.join('\n')}\n`;
  const good = [
    '# Disk DescriptorFile',
    'version=1',
    'CID=12345678',
    'parentCID=ffffffff',
    'createType="monolithicFlat"',
  ];

  it('descriptor with missing or contradictory fields', async () => {
    writeFileSync(join(dir, 'd.bin'), Buffer.alloc(MiB));
    const cases: Array<[string[], string, RegExp]> = [
      [
        [...good.filter((l) => !l.startsWith('createType')), 'RW 2048 FLAT "d.bin" 0'],
        'ECORRUPT',
        /no createType/,
      ],
      [[...good.filter((l) => !l.startsWith('CID')), 'RW 2048 FLAT "d.bin" 0'], 'ECORRUPT', /no CID/],
      [good, 'ECORRUPT', /lists no extents/],
      [
        [...good, 'RW 2048 SPARSE "d.bin"'],
        'ECORRUPT',
        /createType monolithicFlat contradicts its SPARSE extent/,
      ],
      [[...good, 'RW 2048 FLAT "d.bin"'], 'ECORRUPT', /FLAT extent needs an offset/],
      [[...good, 'RW 2048 ZERO "d.bin"'], 'ECORRUPT', /ZERO extent has no file/],
      [[...good, 'RW 4096 FLAT "d.bin" 0'], 'ECORRUPT', /shorter than the descriptor says/],
      [[...good, 'RW 2048 FLAT "missing.bin" 0'], 'ENOENT', /missing.bin/],
      [
        [...good, 'RW 2048 FLAT "d.bin" 0', 'RW 99999999999999999999 FLAT "d.bin" 0'],
        'ECORRUPT',
        /invalid size/,
      ],
      [[...good.map((l) => l.replace('12345678', 'xyz')), 'RW 2048 FLAT "d.bin" 0'], 'ECORRUPT', /CID 'xyz'/],
      [[...good, 'RW 2048 SESPARSE "d.bin"'], 'ECORRUPT', /contradicts/],
    ];
    for (const [lines, code, re] of cases) {
      const path = join(dir, 'bad-desc.vmdk');
      writeFileSync(path, desc(lines));
      await rejects(openRO(path), code, re);
    }
  });

  it('a split extent whose capacity does not match the descriptor', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const path = join(dir, 'cap.vmdk');
    must('qemu-img', ['create', '-q', '-f', 'vmdk', '-o', 'subformat=twoGbMaxExtentSparse', path, '8M']);
    const text = readFileSync(path, 'latin1').replace('RW 16384 SPARSE', 'RW 16000 SPARSE');
    writeFileSync(path, text);
    await rejects(
      openRO(path),
      'ECORRUPT',
      /capacity 16384 sectors does not match the descriptor's extent size 16000/,
    );
  });

  it('grain directory past the end, embedded capacity mismatch, truncated file', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const a = sparseImage('gd.vmdk');
    patch(a.path, 56, u64(0x10000n));
    await rejects(openRO(a.path), 'ECORRUPT', /grain directory at sector 65536 .* past end of file/);
    const b = sparseImage('capm.vmdk');
    patch(b.path, 12, u64(65536n));
    await rejects(
      openRO(b.path),
      'ECORRUPT',
      /header capacity 65536 sectors does not match the descriptor's extent size 32768/,
    );
    const c = sparseImage('trunc.vmdk');
    truncateSync(c.path, 4096);
    await rejects(openRO(c.path), 'ECORRUPT', /past end of file|truncated/);
  });

  it('a streamOptimized file cut short (no footer)', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const src = join(dir, 'cut-src.raw');
    must('qemu-img', ['create', '-q', '-f', 'raw', src, '8M']);
    qemuWrite(src, [[0, 3 * MiB, 0x17]], 'raw');
    const path = join(dir, 'cut.vmdk');
    // platter's own writer puts the grain directory at the end (GD_AT_END), as VMware does.
    await createImage(nodeHost, path, {
      format: 'vmdk',
      size: 8 * MiB,
      options: { subformat: 'streamOptimized' },
    });
    const d = await openImage(nodeHost, path, { readOnly: false });
    await d.write(readFileSync(src).subarray(0, 4 * MiB), 0);
    await d.close();
    const size = readFileSync(path).length;
    for (const cut of [size - 512, size - 1536, Math.floor(size / 2)]) {
      const p = join(dir, `cut-${cut}.vmdk`);
      copyFileSync(path, p);
      truncateSync(p, cut);
      await rejects(openRO(p), 'ECORRUPT', /footer .*missing.*cut short/);
    }
  });
});

/** xorshift32: a reproducible sequence. */
function prng(seed: number): () => number {
  let x = seed >>> 0 || 1;
  return () => {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    return x / 0x100000000;
  };
}

async function exercise(path: string): Promise<void> {
  let disk: Disk | undefined;
  try {
    disk = await openRO(path);
    const n = Math.min(disk.size, 4 * MiB);
    await disk.read(new Uint8Array(n), 0);
    if (disk.size <= 64 * 1024 ** 3) await disk.extents(0, disk.size);
    await disk.features.check?.({ repair: 'none' });
    await disk.info();
  } catch (e) {
    if (!(e instanceof PlatterError)) throw e;
  } finally {
    await disk?.close().catch(() => undefined);
  }
}

describe('vmdk seeded mutations of qemu-made images', () => {
  for (const sub of ['monolithicSparse', 'streamOptimized', 'twoGbMaxExtentSparse', 'platterStream']) {
    it(`${sub}: flipped and trimmed bytes give success or a PlatterError`, { timeout: 60_000 }, async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const src = join(dir, `mut-${sub}.raw`);
      must('qemu-img', ['create', '-q', '-f', 'raw', src, '4M']);
      qemuWrite(
        src,
        [
          [65536 + 100, 300000, 0x5c],
          [3 * MiB, 4096, 0x11],
        ],
        'raw',
      );
      const orig = join(dir, `mut-${sub}.vmdk`);
      if (sub === 'platterStream') {
        // platter's own stream layout: GD_AT_END, tables, footer and EOS at the end.
        await createImage(nodeHost, orig, {
          format: 'vmdk',
          size: 4 * MiB,
          options: { subformat: 'streamOptimized' },
        });
        const d = await openImage(nodeHost, orig, { readOnly: false });
        await d.write(readFileSync(src), 0);
        await d.close();
      } else must('qemu-img', ['convert', '-O', 'vmdk', '-o', `subformat=${sub}`, src, orig]);
      // The file that holds the metadata: the image itself, or the first extent.
      const target = sub === 'twoGbMaxExtentSparse' ? join(dir, `mut-${sub}-s001.vmdk`) : orig;
      const pristine = readFileSync(target);
      const pristineDesc = readFileSync(orig);
      const rnd = prng(0x5eed + sub.length);
      for (let i = 0; i < 20; i++) {
        const b = Buffer.from(pristine);
        const kind = rnd();
        let out = b;
        if (kind < 0.8) {
          const flips = 1 + Math.floor(rnd() * 8);
          for (let f = 0; f < flips; f++) {
            // Mostly the metadata at the start (and, for streams, the footer at the end).
            const at =
              rnd() < 0.7 ? Math.floor(rnd() * Math.min(b.length, 4096)) : Math.floor(rnd() * b.length);
            b[at] ^= 1 << Math.floor(rnd() * 8);
          }
          if (sub.endsWith('Stream') || sub === 'streamOptimized')
            if (rnd() < 0.3) b[b.length - 1536 + Math.floor(rnd() * 1536)] ^= 0xff;
        } else {
          out = b.subarray(0, Math.floor(rnd() * b.length));
        }
        writeFileSync(target, out);
        if (sub === 'twoGbMaxExtentSparse' && rnd() < 0.3) {
          const d = Buffer.from(pristineDesc);
          d[Math.floor(rnd() * d.length)] ^= 1 << Math.floor(rnd() * 8);
          writeFileSync(orig, d);
        } else if (sub === 'twoGbMaxExtentSparse') writeFileSync(orig, pristineDesc);
        await exercise(orig);
      }
    });
  }
});
