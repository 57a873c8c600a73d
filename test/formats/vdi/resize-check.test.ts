/** VDI resize (grow, moving blocks when the map outgrows its room; shrink with an empty tail) and check, vs qemu-img check. */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isPlatterError } from '../../../src/core/errors.js';
import { openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { resizeHelpers } from '../resize-helpers.js';
import { assertQemuSame, openRo, qemuSize } from '../vhd/util.js';

const dir = tempDir('platter-vdi-resize-');
const MiB = 1 << 20;

const { make, resize, expectResized } = resizeHelpers('vdi', dir, (path, size, want) => {
  const chk = run('qemu-img', ['check', '-f', 'vdi', path]);
  assert.equal(chk.status, 0, `qemu-img check: ${chk.stdout}${chk.stderr}`);
  assert.equal(qemuSize(path, 'vdi'), size, 'qemu-img size');
  assertQemuSame(dir, path, 'vdi', want, 'qemu reads the resized disk');
});

describe('vdi: resize', () => {
  for (const [sub, options] of [
    ['dynamic', {}],
    ['static', { static: 'on' }],
  ] as Array<[string, Record<string, string>]>) {
    it(`${sub}: grow past the block map's room (blocks move), write, then shrink back`, async (t) => {
      if (!needPeers(t, 'qemu-img')) return;
      const { path, model, uuid } = await make(`grow-${sub}.vdi`, 3 * MiB, options, [
        [0, 5000],
        [2 * MiB + 7, 100],
        [3 * MiB - 1, 1],
      ]);
      await resize(path, 130 * MiB);
      await expectResized(path, model, uuid, 130 * MiB);
      const grown = new Uint8Array(130 * MiB);
      grown.set(model);
      {
        const d = await openImage(nodeHost, path, { readOnly: false });
        const data = randomBytes(3000);
        await d.write(data, 129 * MiB + 5);
        grown.set(data, 129 * MiB + 5);
        await d.close();
      }
      await expectResized(path, grown, uuid, 130 * MiB);
      await assert.rejects(resize(path, 3 * MiB), (e: unknown) => isPlatterError(e) && e.code === 'EINVAL');
      await assert.rejects(
        resize(path, 3 * MiB, true),
        (e: unknown) => isPlatterError(e) && /holds data/.test(String(e)),
      );
      {
        const d = await openImage(nodeHost, path, { readOnly: false });
        await d.writeZeroes(129 * MiB, MiB);
        await d.close();
      }
      await resize(path, 3 * MiB, true);
      await expectResized(path, model, uuid, 3 * MiB);
    });
  }
});

describe('vdi: check', () => {
  it('duplicate indexes, an index past the allocated count and past the end of file agree with qemu-img check', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const { path } = await make('chk.vdi', 4 * MiB, {}, [
      [0, 512],
      [MiB, 512],
    ]);
    let d = await openRo(path);
    assert.equal((await d.features.check!({ repair: 'none' })).corruptions, 0);
    await d.close();
    const orig = readFileSync(path);
    const bmap = orig.readUInt32LE(340);
    const cases: Array<[string, (b: Buffer) => void, RegExp]> = [
      ['duplicate', (b) => b.writeUInt32LE(0, bmap + 4), /both use index 0/],
      ['past the count', (b) => b.writeUInt32LE(7, bmap + 4), /not below the allocated count/],
    ];
    for (const [what, mutate, pattern] of cases) {
      const buf = Buffer.from(orig);
      mutate(buf);
      const p = join(dir, `chk-${what.replace(/\W/g, '')}.vdi`);
      writeFileSync(p, buf);
      d = await openRo(p);
      const r = await d.features.check!({ repair: 'none' });
      await d.close();
      assert.ok(
        r.corruptions > 0 && r.messages.some((m) => pattern.test(m)),
        `${what}: ${r.messages.join('; ')}`,
      );
      assert.equal(
        run('qemu-img', ['check', '-f', 'vdi', p]).status,
        2,
        `${what}: qemu-img check finds corruption too`,
      );
    }
    const far = Buffer.from(orig);
    far.writeUInt32LE(1000, bmap + 4);
    far.writeUInt32LE(1001, 388);
    const p = join(dir, 'chk-far.vdi');
    writeFileSync(p, far);
    // A header count past the blocks in the image is refused at open.
    await assert.rejects(openRo(p), (e: unknown) => isPlatterError(e) && e.code === 'ECORRUPT');
    far.writeUInt32LE(2, 388);
    writeFileSync(p, far);
    d = await openRo(p);
    const r = await d.features.check!({ repair: 'none' });
    assert.ok(
      r.messages.some((m) => /past the end of file/.test(m)),
      r.messages.join('; '),
    );
    await assert.rejects(
      d.read(new Uint8Array(10), MiB),
      (e: unknown) => isPlatterError(e) && e.code === 'ECORRUPT',
    );
    await d.close();
  });
});
