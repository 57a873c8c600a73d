/** Malformed VHDs: clear errors naming the field, never a crash or a hang; seeded mutations of qemu-made images. */
import assert from 'node:assert/strict';
import {
  closeSync,
  copyFileSync,
  openSync,
  readFileSync,
  truncateSync,
  writeFileSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { isPlatterError } from '../../../src/core/errors.js';
import { checksum } from '../../../src/formats/vhd/footer.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { openAndReadTolerant, openRo, prng, readAll } from './util.js';

const dir = tempDir('platter-vhd-bad-');

function qemuImage(name: string, opts: string[], size: string): string {
  const path = join(dir, name);
  must('qemu-img', ['create', '-q', '-f', 'vpc', ...opts, path, size]);
  must('qemu-io', ['-f', 'vpc', '-c', 'write -P 0x5a 0 70000', '-c', 'write -P 0xa5 2100000 5000', path]);
  return path;
}

/** Recomputes the footer copy, the dynamic header and the end footer checksums, so a mutation reaches deeper. */
function fixChecksums(buf: Buffer): void {
  const fix = (at: number, len: number, field: number) => {
    if (at < 0 || at + len > buf.length) return;
    buf.writeUInt32BE(checksum(buf.subarray(at, at + len), field), at + field);
  };
  if (buf.subarray(0, 8).toString() === 'conectix') fix(0, 512, 64);
  if (buf.subarray(512, 520).toString() === 'cxsparse') fix(512, 1024, 36);
  fix(buf.length - 512, 512, 64);
}

function variant(src: string, name: string, mutate: (b: Buffer) => unknown): string {
  const buf = readFileSync(src);
  const r = mutate(buf);
  const out = Buffer.isBuffer(r) ? r : buf;
  const p = join(dir, name);
  writeFileSync(p, out);
  return p;
}

const corruptWith = (re: RegExp) => (e: unknown) =>
  isPlatterError(e) && e.code === 'ECORRUPT' && re.test(e.message);

describe('vhd: bad input', () => {
  it('footer checksum mismatch: reported; force=on reads anyway', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    for (const [kind, opts] of [
      ['fixed', ['-o', 'subformat=fixed']],
      ['dynamic', []],
    ] as Array<[string, string[]]>) {
      const src = qemuImage(`ck-${kind}.vhd`, opts, '4M');
      const good = await openRo(src);
      const want = await readAll(good);
      await good.close();
      const bad = variant(src, `ck-${kind}-bad.vhd`, (b) => {
        const at = kind === 'fixed' ? b.length - 512 : 0;
        b.writeUInt32BE(b.readUInt32BE(at + 24) ^ 1, at + 24); // the time stamp
        if (kind === 'dynamic') b.writeUInt32BE(b.readUInt32BE(b.length - 512 + 24) ^ 1, b.length - 512 + 24);
      });
      await assert.rejects(openRo(bad), corruptWith(/footer checksum .* force=on/));
      const forced = await openRo(bad, { force: 'on' });
      assert.deepEqual(await readAll(forced), want);
      const r = await forced.features.check!({ repair: 'none' });
      assert.ok(r.corruptions > 0, 'check reports the checksum');
      await forced.close();
    }
  });

  it('a bad dynamic copy at offset 0 falls back to the footer at the end', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const src = qemuImage('fallback.vhd', [], '4M');
    const p = variant(src, 'fallback-bad.vhd', (b) => {
      b[30] ^= 0xff;
    });
    const d = await openRo(p);
    const orig = await openRo(src);
    await orig.close();
    assert.equal(d.size, orig.size);
    await d.close();
  });

  it('block size not a power of two, absurd block size, BAT past the end, header past the end', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const src = qemuImage('hdr.vhd', [], '4M');
    const cases: Array<[string, (b: Buffer) => void, RegExp]> = [
      ['bs3m', (b) => b.writeUInt32BE(3 * 1024 * 1024, 512 + 32), /block size 3145728 is not a power of two/],
      ['bs2g', (b) => b.writeUInt32BE(0x80000000, 512 + 32), /block size 2147483648/],
      ['bat', (b) => b.writeBigUInt64BE(1n << 40n, 512 + 16), /BAT at offset .* past the end of file/],
      ['entries', (b) => b.writeUInt32BE(0x7fffffff, 512 + 28), /BAT .* past the end of file/],
      ['hdr', (b) => b.writeBigUInt64BE(1n << 45n, 16), /data offset .* dynamic header/],
      ['type', (b) => b.writeUInt32BE(7, 60), /disk type 7/],
      ['size', (b) => b.writeBigUInt64BE(1n << 62n, 48), /current size|2040 GiB|does not cover/],
    ];
    for (const [name, mutate, re] of cases) {
      const p = variant(src, `hdr-${name}.vhd`, (b) => {
        const tail = Buffer.from(b.subarray(b.length - 512));
        mutate(b);
        // Keep the end footer as the (valid) mutated copy so both paths see the same image.
        if (name === 'hdr' || name === 'type' || name === 'size') b.set(b.subarray(0, 512), b.length - 512);
        else b.set(tail, b.length - 512);
        fixChecksums(b);
      });
      await assert.rejects(openRo(p), corruptWith(re), name);
    }
  });

  it('Max Table Entries far past the disk: only the entries that cover it are read; a BAT too large for memory is refused', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const src = qemuImage('entries.vhd', [], '4M');
    const orig = await openRo(src);
    const want = await readAll(orig);
    await orig.close();
    /** The image with its dynamic header and footers mutated, grown (sparse) to `fileSize` so that the BAT fits. */
    const grown = (name: string, fileSize: number, mutate: (b: Buffer) => void): string => {
      const p = variant(src, name, (b) => {
        mutate(b);
        b.set(b.subarray(0, 512), b.length - 512);
        fixChecksums(b);
      });
      const footer = readFileSync(p).subarray(0, 512);
      truncateSync(p, fileSize);
      const fd = openSync(p, 'r+');
      writeSync(fd, footer, 0, 512, fileSize - 512);
      closeSync(fd);
      return p;
    };
    // 400 million entries (1.6 GB of table) for a 4 MiB disk of two blocks.
    const many = grown('entries-many.vhd', 2 ** 31, (b) => b.writeUInt32BE(400_000_000, 512 + 28));
    const d = await openRo(many);
    assert.deepEqual(await readAll(d), want);
    await d.close();
    // 2040 GiB in blocks of 512 bytes: 4.28 billion entries (17 GB of table).
    const huge = grown('entries-huge.vhd', 18 * 2 ** 30, (b) => {
      b.write('win ', 28, 'latin1'); // creator application: one whose images are sized by the current size
      b.writeBigUInt64BE(2040n << 30n, 48); // current size
      b.writeUInt32BE(512, 512 + 32); // block size
      b.writeUInt32BE(0xff000000, 512 + 28); // max table entries
    });
    await assert.rejects(
      openRo(huge),
      (e) => isPlatterError(e) && /need 4278190080 BAT entries, more than platter handles/.test(e.message),
    );
  });

  it('truncated and empty files', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const src = qemuImage('trunc.vhd', [], '4M');
    for (const len of [0, 100, 511, 1000, 2000]) {
      const p = variant(src, `trunc-${len}.vhd`, (b) => b.subarray(0, len));
      const got = await openAndReadTolerant(p);
      assert.notEqual(got, 'ok', `truncated to ${len}`);
    }
  });

  it('seeded mutations of qemu-made fixed and dynamic images: success or a PlatterError', async (t) => {
    if (!needPeers(t, 'qemu-img', 'qemu-io')) return;
    const sources = [
      qemuImage('mut-dyn.vhd', [], '4M'),
      qemuImage('mut-fixed.vhd', ['-o', 'subformat=fixed'], '3M'),
    ];
    const outcomes = new Map<string, number>();
    for (let seed = 1; seed <= 60; seed++) {
      const rnd = prng(seed);
      const src = sources[seed % 2];
      const p = join(dir, `mut-${seed}.vhd`);
      copyFileSync(src, p);
      let buf = readFileSync(p);
      const flips = 1 + Math.floor(rnd() * 8);
      const meta = seed % 2 === 0 ? 2048 : buf.length; // dynamic: footer, header, BAT
      for (let i = 0; i < flips; i++) {
        const at = rnd() < 0.3 ? buf.length - 512 + Math.floor(rnd() * 512) : Math.floor(rnd() * meta);
        buf[at] ^= 1 << Math.floor(rnd() * 8);
      }
      if (rnd() < 0.15) buf = buf.subarray(0, Math.floor(rnd() * buf.length));
      if (rnd() < 0.6) fixChecksums(buf);
      writeFileSync(p, buf);
      const got = await openAndReadTolerant(p, rnd() < 0.3 ? { force: 'on' } : {});
      outcomes.set(got, (outcomes.get(got) ?? 0) + 1);
    }
    t.diagnostic(JSON.stringify(Object.fromEntries(outcomes)));
    assert.ok((outcomes.get('ok') ?? 0) > 0 && outcomes.size > 1, 'both opened and refused images occur');
  });
});
