/** qemu-img/qemu-io write VHDX images -> platter reads them byte-identically. */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import { crc32c } from '../../../src/formats/vhdx/crc32c.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { MiB, openRead, qemuRaw, readAll } from './util.js';

const dir = tempDir('platter-vhdx-read-');

describe('vhdx crc32c', () => {
  it('matches the Castagnoli check value and chains', () => {
    const text = new TextEncoder().encode('123456789');
    assert.equal(crc32c(text), 0xe3069283);
    assert.equal(crc32c(text.subarray(4), crc32c(text.subarray(0, 4))), 0xe3069283);
    assert.equal(crc32c(new Uint8Array(32)), 0x8a9136aa);
  });
});

/** Writes at odd offsets, across blocks and at the very end. */
function qemuWrites(path: string, size: number): void {
  must('qemu-io', [
    '-f',
    'vhdx',
    '-c',
    'write -P 0x11 1 1',
    '-c',
    'write -P 0x22 511 3',
    '-c',
    `write -P 0x33 ${MiB - 7} 70001`,
    '-c',
    `write -P 0x44 ${Math.floor(size / 2) + 3} 4099`,
    '-c',
    `write -P 0x55 ${size - 1} 1`,
    '-c',
    `write -P 0x66 ${size - 8192 - 5} 8192`,
    '-c',
    `write -z ${Math.floor(size / 2)} 512`,
    path,
  ]);
}

describe('vhdx: qemu-made images read byte-identically', () => {
  const cases: Array<[string, string[], number]> = [
    ['dynamic, default options', [], 64 * MiB + 512],
    ['fixed block_size=2M', ['subformat=fixed', 'block_size=2M'], 9 * MiB + 512],
    ['dynamic block_size=1M', ['block_size=1M'], 40 * MiB + 3 * 512],
    ['dynamic block_size=256M', ['block_size=256M'], 257 * MiB],
    ['dynamic log_size=4M block_state_zero=off', ['log_size=4M', 'block_state_zero=off'], 16 * MiB],
  ];
  for (const [name, opts, size] of cases) {
    it(name, async (t) => {
      if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
      const img = join(dir, `${name.replace(/\W+/g, '_')}.vhdx`);
      const args = ['create', '-q', '-f', 'vhdx'];
      if (opts.length) args.push('-o', opts.join(','));
      must('qemu-img', [...args, img, String(size)]);
      qemuWrites(img, size);
      const want = qemuRaw(img, `${img}.raw`);
      const d = await openRead(img);
      try {
        assert.equal(d.size, size);
        const got = await readAll(d);
        assert.ok(got.equals(want), 'content differs from qemu-img convert');
        const info = await d.info();
        assert.equal(info.format, 'vhdx');
        assert.equal(info.subformat, opts.includes('subformat=fixed') ? 'fixed' : 'dynamic');
        // extents tile the disk, and every non-data extent reads zeros in qemu's view too.
        let pos = 0;
        for (const e of await d.extents(0, size)) {
          assert.equal(e.offset, pos);
          pos += e.length;
          if (e.status !== 'data')
            assert.ok(want.subarray(e.offset, e.offset + e.length).every((b) => b === 0));
        }
        assert.equal(pos, size);
      } finally {
        await d.close();
      }
    });
  }
});

describe('vhdx headers', () => {
  async function qemuImage(name: string): Promise<[string, Buffer]> {
    const img = join(dir, name);
    must('qemu-img', ['create', '-q', '-f', 'vhdx', '-o', 'block_size=1M', img, '8M']);
    must('qemu-io', ['-f', 'vhdx', '-c', 'write -P 0x7e 4096 10000', img]);
    return [img, qemuRaw(img, `${img}.raw`)];
  }

  it('a CRC mismatch in the current header falls back to the other header', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const [img, want] = await qemuImage('crc1.vhdx');
    const bytes = readFileSync(img);
    // Damage whichever header has the higher sequence number.
    const s1 = bytes.readBigUInt64LE(64 * 1024 + 8);
    const s2 = bytes.readBigUInt64LE(128 * 1024 + 8);
    const at = (s1 > s2 ? 64 : 128) * 1024 + 100;
    bytes[at] ^= 0xff;
    writeFileSync(img, bytes);
    const d = await openRead(img);
    try {
      assert.ok((await readAll(d)).equals(want));
      const seq = (await d.info()).details?.headerSequence;
      // biome-ignore lint/complexity/useMathMinMax: BigInt values
      assert.equal(BigInt(seq as number), s1 > s2 ? s2 : s1);
    } finally {
      await d.close();
    }
  });

  it('both headers invalid is a clear corrupt-image error', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const [img] = await qemuImage('crc2.vhdx');
    const bytes = readFileSync(img);
    bytes[64 * 1024 + 100] ^= 1;
    bytes[128 * 1024 + 100] ^= 1;
    writeFileSync(img, bytes);
    await assert.rejects(openRead(img), (e: unknown) => {
      return e instanceof PlatterError && e.code === 'ECORRUPT' && /both headers are invalid/.test(e.message);
    });
  });

  it('a damaged first region table falls back to the second', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const [img, want] = await qemuImage('rt.vhdx');
    const bytes = readFileSync(img);
    bytes[192 * 1024 + 20] ^= 0x55;
    writeFileSync(img, bytes);
    const d = await openRead(img);
    try {
      assert.ok((await readAll(d)).equals(want));
    } finally {
      await d.close();
    }
  });
});
