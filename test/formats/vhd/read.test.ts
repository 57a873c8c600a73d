/** qemu-img/qemu-io write VHDs; platter reads them byte-identically. */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isAllZero } from '../../../src/core/bytes.js';
import { createImage, probe } from '../../../src/formats/open.js';
import { checksum, chsGeometry, chsSectors } from '../../../src/formats/vhd/footer.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { assertQemuSame, assertSame, openRo, qemuSize, qemuWrites, readAll } from './util.js';

const dir = tempDir('platter-vhd-read-');

function writesFor(size: number): Array<[number, number, number]> {
  return [
    [0, 512, 1],
    [1000, 3, 2],
    [2 * 1024 * 1024 - 7, 70, 3], // straddles the first 2 MiB block boundary
    [5 * 1024 * 1024 + 511, 4097, 4],
    [size - 4096 - 512, 4096, 5],
    [size - 1, 1, 6],
  ];
}

async function checkImage(name: string, opts: string[], sizeArg: string): Promise<void> {
  const path = join(dir, `${name}.vhd`);
  must('qemu-img', ['create', '-q', '-f', 'vpc', ...opts, path, sizeArg]);
  const size = qemuSize(path, 'vpc');
  const model = qemuWrites(path, 'vpc', size, writesFor(size));
  assert.equal(await probeName(path), 'vhd', `${name}: probed as vhd`);
  const disk = await openRo(path);
  try {
    assert.equal(disk.size, size, `${name}: platter and qemu agree on the size`);
    assert.equal((await disk.info()).format, 'vhd');
    const got = await readAll(disk);
    assertSame(got, model, `${name}: platter vs the writes`);
    assertQemuSame(dir, path, 'vpc', got, `${name}: platter vs qemu`);
    for (const e of await disk.extents(0, disk.size)) {
      if (e.status !== 'data') assert.ok(isAllZero(model.subarray(e.offset, e.offset + e.length)));
    }
  } finally {
    await disk.close();
  }
}

async function probeName(path: string): Promise<string> {
  const s = await nodeHost.open(path, { write: false });
  try {
    return (await probe(s)).name;
  } finally {
    await s.close();
  }
}

describe('vhd: reading qemu-made images', () => {
  for (const [name, opts, size] of [
    ['dynamic-odd', ['-o', 'subformat=dynamic'], '100000000'],
    ['fixed-odd', ['-o', 'subformat=fixed'], '10000000'],
    ['dynamic-force-size', ['-o', 'subformat=dynamic,force_size=on'], '10000000'],
    ['fixed-force-size', ['-o', 'subformat=fixed,force_size=on'], '33554944'],
    ['dynamic-12m', [], '12M'],
  ] as Array<[string, string[], string]>) {
    it(`${name} ${size}: size, bytes and extents match qemu`, async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      await checkImage(name, opts, size);
    });
  }
});

describe('vhd: which size a reader trusts (the creator application rule)', () => {
  it('platter and qemu agree for every creator and geometry', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const path = join(dir, 'creator.vhd');
    // 10000384 bytes is not a CHS product: the CHS size is smaller.
    await createImage(nodeHost, path, { format: 'vhd', size: 10000384, options: { subformat: 'fixed' } });
    const orig = readFileSync(path);
    const at = orig.length - 512;
    const cases: Array<[string, boolean, number]> = [
      ['win ', false, 10000384],
      ['vpc ', false, -1],
      ['qemu', false, -1],
      ['qem2', false, 10000384],
      ['d2v ', false, 10000384],
      ['vpc ', true, 10000384],
    ];
    for (const [creator, maxChs, want] of cases) {
      const buf = Buffer.from(orig);
      buf.write(creator, at + 28, 'latin1');
      if (maxChs) {
        buf.writeUInt16BE(65535, at + 56);
        buf[at + 58] = 16;
        buf[at + 59] = 255;
      }
      buf.writeUInt32BE(checksum(buf.subarray(at), 64), at + 64);
      const p = join(dir, `creator-${creator.trim()}-${maxChs}.vhd`);
      writeFileSync(p, buf);
      const d = await openRo(p);
      const q = qemuSize(p, 'vpc');
      assert.equal(d.size, q, `${creator} (max CHS ${maxChs}): platter ${d.size}, qemu ${q}`);
      const g = chsGeometry(10000384 / 512);
      assert.equal(d.size, want === -1 ? chsSectors(g) * 512 : want, creator);
      await d.close();
    }
  });
});
