/** platter writes VHDs; qemu-img checks and reads them, vhdiinfo opens them, all agree on the size. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { createImage, openImage } from '../../../src/formats/open.js';
import { resizeDisk } from '../../../src/ops/resize.js';
import { nodeHost } from '../../../src/storage/host.js';
import { testDisk } from '../../conformance/disk.js';
import { must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { assertQemuSame, assertSame, openRo, qemuSize, readAll } from './util.js';

const dir = tempDir('platter-vhd-write-');
let n = 0;

for (const sub of ['dynamic', 'fixed']) {
  testDisk(`vhd ${sub}`, async (size) => {
    const path = join(dir, `conf-${sub}-${n++}.vhd`);
    await createImage(nodeHost, path, { format: 'vhd', size, options: { subformat: sub } });
    const disk = await openImage(nodeHost, path, { readOnly: false });
    return { disk, reopen: () => openImage(nodeHost, path, { readOnly: true }) };
  });
}

/** Writes a few unaligned pieces through platter and returns the model. */
async function platterWrites(path: string): Promise<Uint8Array> {
  const disk = await openImage(nodeHost, path, { readOnly: false });
  const model = new Uint8Array(disk.size);
  try {
    for (const [off, len] of [
      [0, 4096],
      [777, 1234],
      [2 * 1024 * 1024 - 100, 300],
      [disk.size - 513, 513],
    ]) {
      const data = randomBytes(len);
      await disk.write(data, off);
      model.set(data, off);
    }
    await disk.flush();
  } finally {
    await disk.close();
  }
  return model;
}

function vhdiMediaSize(path: string): number {
  const out = must('vhdiinfo', [path]);
  const m = /Media size\s*:.*\((\d+) bytes\)/.exec(out);
  assert.ok(m, `vhdiinfo prints a media size:\n${out}`);
  return Number(m[1]);
}

describe('vhd: platter writes, peers read', () => {
  for (const [name, options, size, expectSize] of [
    ['dynamic exact odd size', { subformat: 'dynamic' }, 100000000, 100000256],
    ['fixed exact size', { subformat: 'fixed' }, 10000384, 10000384],
    ['dynamic force_size=off rounds up to CHS like qemu', { force_size: 'off' }, 100000000, 100061184],
    ['fixed azure=on rounds up to a whole MiB', { azure: 'on' }, 10000000, 10485760],
  ] as Array<[string, Record<string, string>, number, number]>) {
    it(`${name}: qemu-img check clean, compare identical, vhdiinfo agrees on ${expectSize}`, async (t) => {
      if (!needPeers(t, 'qemu-img', 'vhdiinfo')) return;
      const path = join(dir, `${name.replace(/\W+/g, '-')}.vhd`);
      await createImage(nodeHost, path, { format: 'vhd', size, options });
      const model = await platterWrites(path);
      const d = await openRo(path);
      assert.equal(d.size, expectSize, 'platter size');
      assertSame(await readAll(d), model, 'platter reads back');
      await d.close();
      assert.equal(qemuSize(path, 'vpc'), expectSize, 'qemu-img size');
      assert.equal(vhdiMediaSize(path), expectSize, 'vhdiinfo size');
      const chk = run('qemu-img', ['check', '-f', 'vpc', path]);
      // qemu has no check for vpc: it says so (exit 63) rather than finding errors.
      assert.ok(
        chk.status === 0 || /not support/i.test(chk.stderr),
        `qemu-img check: ${chk.status} ${chk.stderr}`,
      );
      assertQemuSame(dir, path, 'vpc', model, 'qemu reads what platter wrote');
      const raw = join(dir, `${name.replace(/\W+/g, '-')}.raw`);
      writeFileSync(raw, model);
      const cmp = run('qemu-img', ['compare', '-f', 'vpc', '-F', 'raw', path, raw]);
      assert.equal(cmp.status, 0, `qemu-img compare: ${cmp.stdout}${cmp.stderr}`);
    });
  }

  it('parallel writes into one new block (the metadata lock is not taken twice)', async () => {
    for (const format of ['vhd', 'vdi']) {
      const path = join(dir, `parallel.${format}`);
      await createImage(nodeHost, path, { format, size: 8 << 20 });
      const d = await openImage(nodeHost, path, { readOnly: false });
      const model = new Uint8Array(d.size);
      const writes = [0, 1, 2, 3, 5, 6].map((i) => {
        const data = randomBytes(256 << 10);
        model.set(data, i * (256 << 10));
        return d.write(data, i * (256 << 10));
      });
      await Promise.all(writes);
      await d.close();
      const again = await openRo(path);
      assertSame(await readAll(again), model, `${format}: parallel writes`);
      await again.close();
    }
  });

  it('preallocation=full makes a thick fixed VHD and a static VDI', async () => {
    for (const [format, sub] of [
      ['vhd', 'fixed'],
      ['vdi', 'static'],
    ]) {
      const path = join(dir, `thick.${format}`);
      await createImage(nodeHost, path, { format, size: 3 << 20, options: { preallocation: 'full' } });
      const d = await openRo(path);
      try {
        assert.equal((await d.info()).subformat, sub);
        assert.ok(statSync(path).blocks * 512 >= 3 << 20, `${format}: the space is allocated`);
      } finally {
        await d.close();
      }
    }
  });

  it('a fixed VHD is probed as vhd, never raw', async () => {
    const path = join(dir, 'probe-fixed.vhd');
    await createImage(nodeHost, path, { format: 'vhd', size: 1 << 20, options: { subformat: 'fixed' } });
    const d = await openRo(path);
    try {
      assert.equal((await d.info()).format, 'vhd');
      assert.equal((await d.info()).subformat, 'fixed');
      assert.equal(d.size, 1 << 20);
    } finally {
      await d.close();
    }
  });

  it('refuses unknown options and bad combinations', async () => {
    const bad: Array<Record<string, string>> = [
      { bogus: '1' },
      { subformat: 'sparse' },
      { azure: 'on', subformat: 'dynamic' },
      { force_size: 'maybe' },
    ];
    for (const options of bad) {
      await assert.rejects(
        createImage(nodeHost, join(dir, `bad-${n++}.vhd`), { format: 'vhd', size: 1 << 20, options }),
        (e: Error & { code?: string }) => e.code === 'EINVAL',
      );
    }
    // A BAT past what platter keeps in memory (2^24 entries): at create and at resize.
    const name = join(dir, `bad-${n++}.vhd`);
    const tiny = { block_size: '512' };
    await assert.rejects(
      createImage(nodeHost, name, { format: 'vhd', size: 100 * 2 ** 30, options: tiny }),
      /need 209715200 BAT entries, more than platter handles/,
    );
    await createImage(nodeHost, name, { format: 'vhd', size: 2 ** 30, options: tiny });
    const d = await openImage(nodeHost, name, { readOnly: false });
    try {
      await assert.rejects(resizeDisk(d, 100 * 2 ** 30), /need 209715200 BAT entries/);
      assert.equal(d.size, 2 ** 30);
    } finally {
      await d.close();
    }
  });
});
