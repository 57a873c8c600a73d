/** platter writes VHDX -> qemu-img check is clean and qemu reads the same bytes; the conformance suite. */
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { testDisk } from '../../conformance/disk.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { create, MiB, openRead, openWrite, pattern, qemuRaw, readAll, writeSparse } from './util.js';

const dir = tempDir('platter-vhdx-write-');
let n = 0;
const fresh = (tag: string): string => join(dir, `${tag}-${n++}.vhdx`);

/** `unsafe`: cache=unsafe (no fsync) to spare the shared disk; the first case keeps the real barriers. */
function conformance(name: string, options: Record<string, string>, sectorAlign = 512, unsafe = true): void {
  testDisk(`vhdx ${name}`, async (size) => {
    const path = fresh(name.replace(/\W+/g, '_'));
    await create(path, Math.ceil(size / sectorAlign) * sectorAlign, options);
    return { disk: await openWrite(path, unsafe), reopen: () => openRead(path) };
  });
}

conformance('dynamic 1 MiB blocks', { block_size: '1M' }, 512, false);
conformance('dynamic default blocks', {});
conformance('fixed', { subformat: 'fixed', block_size: '1M' });
conformance('dynamic 4096-byte sectors', { block_size: '1M', logical_sector_size: '4096' }, 4096);
conformance('dense dynamic', { block_size: '2M', dense: 'on' });
testDisk('vhdx differencing over an empty parent', async (size) => {
  const base = fresh('base');
  await create(base, Math.ceil(size / 512) * 512, { block_size: '1M' });
  const child = fresh('child');
  await create(child, 0, { block_size: '1M' }, base);
  return { disk: await openWrite(child), reopen: () => openRead(child) };
});

/** Writes a model through platter and returns it. */
async function writeModel(path: string, size: number): Promise<Uint8Array> {
  const model = new Uint8Array(size);
  const d = await openWrite(path, true);
  try {
    const writes: Array<[number, number]> = [
      [0, 1],
      [511, 3],
      [MiB - 5, 3 * MiB + 11],
      [Math.floor(size / 2) + 7, 4099],
      [size - 1, 1],
      [size - 70000, 9000],
    ];
    writes.forEach(([o, l], i) => {
      const b = pattern(l, i + 1);
      model.set(b, o);
    });
    for (const [o, l] of writes) await d.write(model.subarray(o, o + l), o);
    await d.writeZeroes(MiB, MiB);
    model.fill(0, MiB, 2 * MiB);
  } finally {
    await d.close();
  }
  return model;
}

describe('vhdx: platter-written images pass qemu-img check and compare', () => {
  const cases: Array<[string, Record<string, string>, number]> = [
    ['dynamic', {}, 24 * MiB + 512],
    ['dynamic 1M blocks, 4M log', { block_size: '1M', log_size: '4M' }, 20 * MiB],
    ['dynamic 256M blocks', { block_size: '256M' }, 257 * MiB],
    ['fixed', { subformat: 'fixed', block_size: '1M' }, 10 * MiB],
    ['dense dynamic', { dense: 'on', block_size: '1M' }, 12 * MiB],
    ['block_state_zero=on', { block_state_zero: 'on', block_size: '4M' }, 12 * MiB],
  ];
  for (const [name, options, size] of cases) {
    it(name, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const path = fresh(name.replace(/\W+/g, '_'));
      await create(path, size, options);
      const model = await writeModel(path, size);
      const raw = `${path}.model`;
      writeSparse(raw, model);
      must('qemu-img', ['check', '-f', 'vhdx', path]);
      const out = must('qemu-img', ['compare', '-f', 'vhdx', '-F', 'raw', path, raw]);
      assert.match(out, /Images are identical/);
      const info = JSON.parse(must('qemu-img', ['info', '--output=json', path]));
      assert.equal(info['virtual-size'], size);
      if (options.dense === 'on' || options.subformat === 'fixed') {
        const st = statSync(path);
        if (options.dense === 'on') assert.ok(st.blocks * 512 >= st.size, 'a dense file has no holes');
      }
      const d = await openRead(path);
      try {
        assert.ok((await readAll(d)).equals(Buffer.from(model)));
      } finally {
        await d.close();
      }
    });
  }

  it('a platter image keeps qemu writes after qemu opens it for writing', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const path = fresh('mixed');
    const size = 16 * MiB;
    await create(path, size, { block_size: '1M' });
    const model = await writeModel(path, size);
    must('qemu-io', ['-f', 'vhdx', '-c', `write -P 0x5a ${5 * MiB + 3} 2000`, path]);
    model.fill(0x5a, 5 * MiB + 3, 5 * MiB + 2003);
    const d = await openRead(path);
    try {
      assert.ok((await readAll(d)).equals(Buffer.from(model)));
    } finally {
      await d.close();
    }
    assert.ok(qemuRaw(path, `${path}.raw`).equals(Buffer.from(model)));
  });
});
