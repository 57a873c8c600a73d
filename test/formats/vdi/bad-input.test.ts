/** Malformed VDIs: clear errors naming the field, never a crash or a hang; seeded mutations of qemu-made images. */
import assert from 'node:assert/strict';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isPlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { resizeDisk } from '../../../src/ops/resize.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { openAndReadTolerant, openRo, prng } from '../vhd/util.js';

const dir = tempDir('platter-vdi-bad-');

function qemuImage(name: string, opts: string[]): string {
  const path = join(dir, name);
  must('qemu-img', ['create', '-q', '-f', 'vdi', ...opts, path, '3M']);
  must('qemu-io', ['-f', 'vdi', '-c', 'write -P 0x5a 0 70000', '-c', 'write -P 0xa5 2100000 5000', path]);
  return path;
}

function variant(src: string, name: string, mutate: (b: Buffer) => unknown): string {
  const buf = readFileSync(src);
  const r = mutate(buf);
  const p = join(dir, name);
  writeFileSync(p, Buffer.isBuffer(r) ? r : buf);
  return p;
}

describe('vdi: bad input', () => {
  it('each header field that sizes or places something is checked and named', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const src = qemuImage('hdr.vdi', []);
    const cases: Array<[string, (b: Buffer) => void, string, RegExp]> = [
      [
        'bs-odd',
        (b) => b.writeUInt32LE(3 << 20, 376),
        'ECORRUPT',
        /block size 3145728 is not a power of two/,
      ],
      ['bs-absurd', (b) => b.writeUInt32LE(0x80000000, 376), 'ECORRUPT', /block size 2147483648/],
      [
        'blocks',
        (b) => b.writeUInt32LE(0x7fffffff, 384),
        'EUNSUPPORTED',
        /blocks in image .* more than platter handles/,
      ],
      ['bmap', (b) => b.writeUInt32LE(0x7ffffe00, 340), 'ECORRUPT', /block map at .* past the end of file/],
      ['size', (b) => b.writeBigUInt64LE(1n << 60n, 368), 'ECORRUPT', /disk size/],
      ['type', (b) => b.writeUInt32LE(9, 76), 'ECORRUPT', /image type 9/],
      ['undo', (b) => b.writeUInt32LE(3, 76), 'EUNSUPPORTED', /undo/],
      ['version', (b) => b.writeUInt32LE(0x00000001, 68), 'EUNSUPPORTED', /version/],
      ['sector', (b) => b.writeUInt32LE(4096, 360), 'ECORRUPT', /sector size 4096/],
      ['data', (b) => b.writeUInt32LE(0x201, 344), 'ECORRUPT', /data offset/],
      ['diff-null', (b) => b.writeUInt32LE(4, 76), 'ECORRUPT', /null parent UUID/],
    ];
    for (const [name, mutate, code, re] of cases) {
      const p = variant(src, `hdr-${name}.vdi`, mutate);
      await assert.rejects(
        openRo(p),
        (e: unknown) => isPlatterError(e) && e.code === code && re.test(e.message),
        `${name}`,
      );
    }
  });

  it('a disk of more blocks than platter maps (64 TiB in 1 MiB blocks): refused alike at create, resize and open', async (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const over = /more than platter handles \(67108864/;
    await assert.rejects(
      createImage(nodeHost, join(dir, 'big.vdi'), { format: 'vdi', size: 65 * 2 ** 40 }),
      over,
    );
    const small = join(dir, 'grow.vdi');
    await createImage(nodeHost, small, { format: 'vdi', size: 2 ** 20 });
    const d = await openImage(nodeHost, small, { readOnly: false });
    try {
      await assert.rejects(resizeDisk(d, 65 * 2 ** 40), over);
      assert.equal(d.size, 2 ** 20);
    } finally {
      await d.close();
    }
    const theirs = join(dir, 'qemu-big.vdi'); // qemu-img makes it (its limit is higher)
    must('qemu-img', ['create', '-q', '-f', 'vdi', theirs, '65T']);
    await assert.rejects(
      openRo(theirs),
      (e) => isPlatterError(e) && e.code === 'EUNSUPPORTED' && over.test(e.message),
    );
  });

  it('truncated files', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const src = qemuImage('trunc.vdi', []);
    // (Shorter than the signature, a file is just raw bytes.)
    for (const len of [100, 400, 600]) {
      const p = variant(src, `trunc-${len}.vdi`, (b) => b.subarray(0, len));
      assert.notEqual(await openAndReadTolerant(p), 'ok', `truncated to ${len}`);
    }
    // Cutting into the data area leaves the map pointing past the end: check and reads say so.
    const p = variant(src, 'trunc-data.vdi', (b) => b.subarray(0, b.length - 4096));
    assert.equal(await openAndReadTolerant(p), 'ECORRUPT');
  });

  it('seeded mutations of qemu-made static and dynamic images: success or a PlatterError', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const sources = [qemuImage('mut-dyn.vdi', []), qemuImage('mut-static.vdi', ['-o', 'static=on'])];
    const outcomes = new Map<string, number>();
    for (let seed = 1; seed <= 80; seed++) {
      const rnd = prng(seed * 7919);
      let buf = readFileSync(sources[seed % 2]);
      const flips = 1 + Math.floor(rnd() * 6);
      for (let i = 0; i < flips; i++) {
        const at = rnd() < 0.7 ? 64 + Math.floor(rnd() * 448) : 512 + Math.floor(rnd() * 512);
        buf[at] ^= 1 << Math.floor(rnd() * 8);
      }
      if (rnd() < 0.15) buf = buf.subarray(0, Math.floor(rnd() * buf.length));
      const p = join(dir, `mut-${seed}.vdi`);
      writeFileSync(p, buf);
      const got = await openAndReadTolerant(p);
      outcomes.set(got, (outcomes.get(got) ?? 0) + 1);
    }
    t.diagnostic(JSON.stringify(Object.fromEntries(outcomes)));
    assert.ok((outcomes.get('ok') ?? 0) > 0 && outcomes.size > 1, 'both opened and refused images occur');
  });
});
