/** VDI both ways: qemu writes and platter reads; platter writes and qemu checks and reads. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isPlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { testDisk } from '../../conformance/disk.js';
import { must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { assertQemuSame, assertSame, openRo, qemuSize, qemuWrites, readAll } from '../vhd/util.js';

const dir = tempDir('platter-vdi-');
let n = 0;

for (const sub of ['dynamic', 'static']) {
  testDisk(`vdi ${sub}`, async (size) => {
    const path = join(dir, `conf-${sub}-${n++}.vdi`);
    await createImage(nodeHost, path, { format: 'vdi', size, options: { subformat: sub } });
    const disk = await openImage(nodeHost, path, { readOnly: false });
    return { disk, reopen: () => openImage(nodeHost, path, { readOnly: true }) };
  });
}

describe('vdi: reading qemu-made images', () => {
  for (const [name, opts, size] of [
    ['dynamic-odd', [], '100000000'],
    ['static', ['-o', 'static=on'], '9437696'],
  ] as Array<[string, string[], string]>) {
    it(`${name} ${size}: size, bytes and extents match qemu`, async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const path = join(dir, `${name}.vdi`);
      must('qemu-img', ['create', '-q', '-f', 'vdi', ...opts, path, size]);
      const vsize = qemuSize(path, 'vdi');
      const model = qemuWrites(path, 'vdi', vsize, [
        [0, 512, 1],
        [1000, 3, 2],
        [(1 << 20) - 7, 70, 3],
        [3 * (1 << 20) + 511, 4097, 4],
        [vsize - 4096 - 512, 4096, 5],
        [vsize - 1, 1, 6],
      ]);
      const d = await openRo(path);
      try {
        assert.equal(d.size, vsize);
        assert.equal((await d.info()).format, 'vdi');
        const got = await readAll(d);
        assertSame(got, model, 'platter vs the writes');
        assertQemuSame(dir, path, 'vdi', got, 'platter vs qemu');
        const exts = await d.extents(0, d.size);
        if (name.startsWith('dynamic'))
          assert.ok(
            exts.some((e) => e.status !== 'data'),
            'a dynamic image has holes',
          );
      } finally {
        await d.close();
      }
    });
  }
});

async function platterWrites(path: string): Promise<Uint8Array> {
  const disk = await openImage(nodeHost, path, { readOnly: false });
  const model = new Uint8Array(disk.size);
  try {
    for (const [off, len] of [
      [0, 4096],
      [777, 1234],
      [(1 << 20) - 100, 300],
      [disk.size - 513, 513],
    ]) {
      const data = randomBytes(len);
      await disk.write(data, off);
      model.set(data, off);
    }
    // Whole zero blocks in a dynamic image become zero markers, not data.
    await disk.writeZeroes(4 << 20, 2 << 20);
  } finally {
    await disk.close();
  }
  return model;
}

describe('vdi: platter writes, qemu checks and reads', () => {
  for (const [name, options] of [
    ['dynamic', {}],
    ['static', { static: 'on' }],
    ['static-by-subformat', { subformat: 'static' }],
  ] as Array<[string, Record<string, string>]>) {
    it(`${name}: qemu-img check clean and compare identical`, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const path = join(dir, `w-${name}.vdi`);
      await createImage(nodeHost, path, { format: 'vdi', size: 100000000, options });
      const model = await platterWrites(path);
      assert.equal(qemuSize(path, 'vdi'), 100000256);
      const chk = run('qemu-img', ['check', '-f', 'vdi', path]);
      assert.equal(chk.status, 0, `qemu-img check: ${chk.stdout}${chk.stderr}`);
      assertQemuSame(dir, path, 'vdi', model, 'qemu reads what platter wrote');
      const raw = join(dir, `w-${name}.raw`);
      writeFileSync(raw, model);
      const cmp = run('qemu-img', ['compare', '-f', 'vdi', '-F', 'raw', path, raw]);
      assert.equal(cmp.status, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
      const info = JSON.parse(must('qemu-img', ['info', '--output=json', '-f', 'vdi', path]));
      assert.equal(info['virtual-size'], 100000256);
      const d = await openRo(path);
      assert.equal((await d.info()).subformat, name === 'dynamic' ? 'dynamic' : 'static');
      await d.close();
    });
  }

  it('refuses unknown options and contradictions', async () => {
    const bad: Array<Record<string, string>> = [
      { bogus: '1' },
      { subformat: 'fixed' },
      { static: 'maybe' },
      { subformat: 'dynamic', static: 'on' },
    ];
    for (const options of bad) {
      await assert.rejects(
        createImage(nodeHost, join(dir, `bad-${n++}.vdi`), { format: 'vdi', size: 1 << 20, options }),
        (e: unknown) => isPlatterError(e) && e.code === 'EINVAL',
      );
    }
  });
});
