/** VHD resize (grow, shrink with an empty tail, keeping the UUID) and check, confirmed by qemu-img and vhdiinfo. */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isPlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { resizeHelpers } from '../resize-helpers.js';
import { assertQemuSame, assertSame, openRo, qemuSize, readAll } from './util.js';

const dir = tempDir('platter-vhd-resize-');
const MiB = 1 << 20;

const { make, resize, expectResized } = resizeHelpers('vhd', dir, (path, size, want) => {
  assert.equal(qemuSize(path, 'vpc'), size, 'qemu-img size');
  assert.match(must('vhdiinfo', [path]), new RegExp(`\\(${size} bytes\\)`), 'vhdiinfo size');
  assertQemuSame(dir, path, 'vpc', want, 'qemu reads the resized disk');
});

describe('vhd: resize', () => {
  it('dynamic grow past the BAT room (the BAT moves to the end)', async (t) => {
    if (!needPeers(t, 'qemu-img', 'vhdiinfo')) return;
    // 512 KiB blocks: the BAT's 512 bytes (128 entries) cover 64 MiB.
    const { path, model, uuid } = await make('grow-move.vhd', 4 * MiB, { block_size: '512K' }, [
      [0, 5000],
      [4 * MiB - 100, 100],
    ]);
    await resize(path, 80 * MiB);
    await expectResized(path, model, uuid, 80 * MiB);
    // Still writable after the move: a new block goes after the relocated BAT.
    const d = await openImage(nodeHost, path, { readOnly: false });
    await d.write(new Uint8Array(512).fill(9), 79 * MiB);
    await d.close();
    const again = await openRo(path);
    const buf = new Uint8Array(512);
    await again.read(buf, 79 * MiB);
    assert.ok(buf.every((b) => b === 9));
    assert.equal((await again.features.check!({ repair: 'none' })).corruptions, 0);
    await again.close();
  });

  it('dynamic grow within the BAT room, then shrink back (tail empty) and refusals', async (t) => {
    if (!needPeers(t, 'qemu-img', 'vhdiinfo')) return;
    const { path, model, uuid } = await make('grow-shrink.vhd', 4 * MiB, {}, [[100, 5000]]);
    await resize(path, 40 * MiB);
    await expectResized(path, model, uuid, 40 * MiB);
    await assert.rejects(
      resize(path, 4 * MiB),
      (e: unknown) => isPlatterError(e) && e.code === 'EINVAL' && /--shrink/.test(e.message),
    );
    await resize(path, 4 * MiB, true);
    await expectResized(path, model, uuid, 4 * MiB);
    await assert.rejects(
      resize(path, 2048, true),
      (e: unknown) => isPlatterError(e) && e.code === 'EINVAL' && /holds data/.test(e.message),
    );
    await assert.rejects(resize(path, 1000, true), (e: unknown) => isPlatterError(e) && e.code === 'EINVAL');
  });

  it('fixed grow and shrink move the footer', async (t) => {
    if (!needPeers(t, 'qemu-img', 'vhdiinfo')) return;
    const { path, model, uuid } = await make('fixed.vhd', MiB, { subformat: 'fixed' }, [
      [0, 4096],
      [MiB - 10, 10],
    ]);
    await resize(path, 3 * MiB);
    await expectResized(path, model, uuid, 3 * MiB);
    assert.equal(readFileSync(path).length, 3 * MiB + 512);
    await resize(path, MiB, true);
    await expectResized(path, model, uuid, MiB);
    await assert.rejects(
      resize(path, MiB - 512, true),
      (e: unknown) => isPlatterError(e) && e.code === 'EINVAL',
    );
  });

  it('differencing grow reads zeros past the parent', async () => {
    const base = await make('d-base.vhd', 2 * MiB, {}, [[0, 2 * MiB]]);
    const child = join(dir, 'd-child.vhd');
    await createImage(nodeHost, child, { format: 'vhd', backing: { name: 'd-base.vhd' } });
    await resize(child, 6 * MiB);
    const d = await openRo(child);
    const want = new Uint8Array(6 * MiB);
    want.set(base.model);
    assertSame(await readAll(d), want, 'grown child');
    await d.close();
  });
});

describe('vhd: check', () => {
  it('clean image, overlapping BAT entries, and a BAT entry past the end of file', async () => {
    const { path } = await make('chk.vhd', 8 * MiB, {}, [
      [0, 512],
      [2 * MiB, 512],
    ]);
    let d = await openRo(path);
    assert.equal((await d.features.check!({ repair: 'none' })).corruptions, 0);
    await d.close();
    const buf = readFileSync(path);
    const bat = 1536;
    const first = buf.readUInt32BE(bat);
    buf.writeUInt32BE(first, bat + 4); // block 1 points at block 0's place
    writeFileSync(path, buf);
    d = await openRo(path);
    const r = await d.features.check!({ repair: 'none' });
    assert.ok(r.corruptions >= 1 && r.messages.some((m) => /overlap/.test(m)), r.messages.join('\n'));
    await d.close();
    buf.writeUInt32BE(0x00ffffff, bat + 4); // far past the end
    writeFileSync(path, buf);
    d = await openRo(path);
    const r2 = await d.features.check!({ repair: 'none' });
    assert.ok(
      r2.messages.some((m) => /BAT entry 1 .*past the end of file/.test(m)),
      r2.messages.join('\n'),
    );
    assert.equal((await d.info()).corrupt, true);
    await assert.rejects(
      d.read(new Uint8Array(512), 2 * MiB),
      (e: unknown) => isPlatterError(e) && e.code === 'ECORRUPT',
    );
    await d.close();
    assert.notEqual(run('qemu-img', ['info', '-f', 'vpc', path]).status, 0, 'qemu refuses it too');
  });
});
