/** DiskFeatures of VHDX: resize (grow, shrink, BAT relocation), check and repair, bad input. */
import assert from 'node:assert/strict';
import { appendFileSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import {
  BAT_GUID,
  findRegion,
  METADATA_GUID,
  parseRegionTable,
  serializeRegionTable,
} from '../../../src/formats/vhdx/layout.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { create, MiB, openRead, openWrite, pattern, readAll } from './util.js';

const dir = tempDir('platter-vhdx-features-');
let n = 0;
const fresh = (): string => join(dir, `f${n++}.vhdx`);

async function withData(size: number, opts: Record<string, string>): Promise<[string, Buffer]> {
  const path = fresh();
  await create(path, size, opts);
  const model = Buffer.alloc(size);
  const d = await openWrite(path);
  const a = pattern(size - 3 * MiB, 5);
  await d.write(a, MiB + 17);
  model.set(a, MiB + 17);
  await d.close();
  return [path, model];
}

async function resize(path: string, size: number, shrink = false): Promise<void> {
  const d = await openWrite(path);
  try {
    assert.ok(d.features.resize, 'vhdx offers resize');
    await d.features.resize(size, { shrink });
  } finally {
    await d.close();
  }
}

function qemuSame(path: string, model: Buffer): void {
  const raw = `${path}.model`;
  writeFileSync(raw, model);
  must('qemu-img', ['check', '-f', 'vhdx', path]);
  assert.match(must('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', path, raw]), /identical/);
}

describe('vhdx resize', () => {
  for (const [name, opts] of [
    ['dynamic', { block_size: '1M' }],
    ['fixed', { subformat: 'fixed', block_size: '2M' }],
  ] as const) {
    it(`${name}: shrink mid-block, then grow: the cut part reads zeros`, async (t) => {
      const [path, model] = await withData(10 * MiB, opts);
      const small = 5 * MiB + 512 * 3;
      await resize(path, small, true);
      let d = await openRead(path);
      assert.equal(d.size, small);
      assert.ok((await readAll(d)).equals(model.subarray(0, small)));
      await d.close();
      await resize(path, 14 * MiB);
      const want = Buffer.alloc(14 * MiB);
      want.set(model.subarray(0, small));
      d = await openRead(path);
      try {
        assert.equal(d.size, 14 * MiB);
        assert.ok((await readAll(d)).equals(want));
      } finally {
        await d.close();
      }
      if (needPeers(t, 'qemu-img')) qemuSame(path, want);
    });
  }

  it('refuses to shrink without the shrink flag', async () => {
    const [path] = await withData(6 * MiB, { block_size: '1M' });
    await assert.rejects(
      resize(path, 4 * MiB),
      (e: unknown) => e instanceof PlatterError && e.code === 'EINVAL',
    );
  });

  it('growing past the BAT region moves the BAT; qemu agrees', async (t) => {
    const [path, model] = await withData(8 * MiB, { block_size: '1M' });
    const big = 200 * 1024 * MiB; // 200 GiB: more entries than a 1 MiB BAT region holds
    await resize(path, big);
    const d = await openWrite(path);
    try {
      assert.equal(d.size, big);
      await d.write(pattern(4096, 77), big - 4096);
      const head = new Uint8Array(8 * MiB);
      await d.read(head, 0);
      assert.ok(Buffer.from(head).equals(model));
    } finally {
      await d.close();
    }
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    must('qemu-img', ['check', '-f', 'vhdx', path]);
    const info = JSON.parse(must('qemu-img', ['info', '--output=json', path]));
    assert.equal(info['virtual-size'], big);
    must('qemu-io', [
      '-f',
      'vhdx',
      '-c',
      `read -P 0 ${big - 8192} 4096`,
      '-c',
      `read -P 0 ${100 * 1024 * MiB} 65536`,
      path,
    ]);
    const tail = must('qemu-io', ['-f', 'vhdx', '-c', `read -v ${big - 4096} 16`, path]);
    const want = Buffer.from(pattern(16, 77));
    assert.ok(tail.includes([...want].map((b) => b.toString(16).padStart(2, '0')).join(' ')), tail);
  });
});

describe('vhdx check', () => {
  it('a clean image has no corruptions and no leaks', async () => {
    const [path] = await withData(6 * MiB, { block_size: '1M' });
    const d = await openRead(path);
    try {
      const r = await d.features.check?.({ repair: 'none' });
      assert.deepEqual([r?.corruptions, r?.leaks], [0, 0]);
      assert.equal(r?.details?.allocatedBlocks, 4); // data spans 1 MiB+17 .. 4 MiB+17
    } finally {
      await d.close();
    }
  });

  it('space past the last block is a leak; -r leaks truncates it', async (t) => {
    const [path, model] = await withData(6 * MiB, { block_size: '1M' });
    const before = statSync(path).size;
    appendFileSync(path, Buffer.alloc(3 * MiB, 1));
    let d = await openWrite(path);
    try {
      const r = await d.features.check?.({ repair: 'leaks' });
      assert.equal(r?.repaired?.leaks, 3);
      assert.equal(r?.leaks, 0);
    } finally {
      await d.close();
    }
    assert.equal(statSync(path).size, before);
    d = await openRead(path);
    assert.ok((await readAll(d)).equals(model));
    await d.close();
    if (needPeers(t, 'qemu-img')) qemuSame(path, model);
  });

  it('two BAT entries naming one block are a corruption', async () => {
    const [path] = await withData(6 * MiB, { block_size: '1M' });
    const b = readFileSync(path);
    const rt = parseRegionTable(b.subarray(192 * 1024, 256 * 1024), path);
    const bat = rt && findRegion(rt, BAT_GUID);
    assert.ok(bat);
    b.copy(b, bat.offset + 2 * 8, bat.offset + 1 * 8, bat.offset + 2 * 8); // entry 2 := entry 1
    writeFileSync(path, b);
    const d = await openRead(path);
    try {
      const r = await d.features.check?.({ repair: 'none' });
      assert.ok((r?.corruptions ?? 0) >= 1);
      assert.ok(r?.messages.some((m) => /overlaps/.test(m)));
    } finally {
      await d.close();
    }
  });
});

describe('vhdx bad input', () => {
  async function image(): Promise<[string, Buffer, { bat: number; meta: number }]> {
    const path = fresh();
    await create(path, 6 * MiB, { block_size: '1M' });
    const d = await openWrite(path);
    await d.write(pattern(2 * MiB, 1), 0);
    await d.close();
    const b = readFileSync(path);
    const rt = parseRegionTable(b.subarray(192 * 1024, 256 * 1024), path);
    assert.ok(rt);
    return [
      path,
      b,
      { bat: findRegion(rt, BAT_GUID)?.offset ?? 0, meta: findRegion(rt, METADATA_GUID)?.offset ?? 0 },
    ];
  }
  const isCorrupt = (re: RegExp) => (e: unknown) =>
    e instanceof PlatterError && e.code === 'ECORRUPT' && re.test(e.message);

  it('a BAT entry past the end of the file', async () => {
    const [path, b, at] = await image();
    b.writeUInt32LE(((4000 << 20) | 6) >>> 0, at.bat); // block 0 at 4000 MiB
    writeFileSync(path, b);
    await assert.rejects(
      openRead(path),
      isCorrupt(/BAT entry 0 \(block 0\) offset 4194304000 is outside the file/),
    );
  });

  it('a BAT region past the end of the file', async () => {
    const [path, b] = await image();
    const rt = parseRegionTable(b.subarray(192 * 1024, 256 * 1024), path) ?? [];
    const table = serializeRegionTable(
      rt.map((r) => (findRegion([r], BAT_GUID) ? { ...r, offset: 64 * 1024 * MiB } : r)),
    );
    b.set(table, 192 * 1024);
    b.set(table, 256 * 1024);
    writeFileSync(path, b);
    await assert.rejects(
      openRead(path),
      isCorrupt(/BAT at 68719476736 length 1048576 is past the end of the file/),
    );
  });

  it('a metadata item of absurd size is refused before any allocation', async () => {
    const [path, b, at] = await image();
    b.writeUInt32LE(0xfffffff0, at.meta + 32 + 20); // first item's length
    writeFileSync(path, b);
    await assert.rejects(openRead(path), isCorrupt(/length 4294967280 is above the limit 1048576/));
  });

  it('a metadata entry count above 2047', async () => {
    const [path, b, at] = await image();
    b.writeUInt16LE(5000, at.meta + 10);
    writeFileSync(path, b);
    await assert.rejects(openRead(path), isCorrupt(/metadata entry count 5000/));
  });
});

describe('vhdx block states', () => {
  it('UNDEFINED, ZERO, UNMAPPED (and v0.95 UNMAPPED 5) read zeros; reserved 4 and PARTIALLY_PRESENT without a parent are corrupt', async () => {
    const path = fresh();
    await create(path, 8 * MiB, { block_size: '1M' });
    let d = await openWrite(path);
    await d.write(pattern(8 * MiB, 8), 0);
    await d.close();
    const b = readFileSync(path);
    const rt = parseRegionTable(b.subarray(192 * 1024, 256 * 1024), path);
    const bat = rt && findRegion(rt, BAT_GUID);
    assert.ok(bat);
    // Blocks 1, 2, 3, 5 keep their file offset but change state: the data is no longer theirs.
    for (const [blk, state] of [
      [1, 1],
      [2, 2],
      [3, 3],
      [5, 5],
    ]) {
      const at = bat.offset + blk * 8;
      b.writeUInt32LE(((b.readUInt32LE(at) & ~7) | state) >>> 0, at);
    }
    writeFileSync(path, b);
    d = await openRead(path);
    try {
      const want = Buffer.from(pattern(8 * MiB, 8));
      for (const blk of [1, 2, 3, 5]) want.fill(0, blk * MiB, (blk + 1) * MiB);
      assert.ok((await readAll(d)).equals(want));
      const exts = (await d.extents(0, 8 * MiB)).map((e) => [e.offset / MiB, e.length / MiB, e.status]);
      assert.deepEqual(exts, [
        [0, 1, 'data'],
        [1, 3, 'zero'],
        [4, 1, 'data'],
        [5, 1, 'zero'],
        [6, 2, 'data'],
      ]);
    } finally {
      await d.close();
    }
    for (const state of [4, 7]) {
      const c = Buffer.from(b);
      c.writeUInt32LE(((c.readUInt32LE(bat.offset) & ~7) | state) >>> 0, bat.offset);
      const p2 = fresh();
      writeFileSync(p2, c);
      await assert.rejects(
        openRead(p2),
        (e: unknown) => e instanceof PlatterError && e.code === 'ECORRUPT' && /BAT entry 0/.test(e.message),
      );
    }
  });
});
