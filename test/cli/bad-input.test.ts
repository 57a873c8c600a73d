/**
 * Every bad input of issue 2 gets exactly one `platter: error:` line naming
 * the file (or the option) and the problem, and a non-zero exit.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  chmodSync,
  existsSync,
  linkSync,
  mkdirSync,
  readFileSync,
  rmSync,
  symlinkSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { nbdkitAsFile } from '../helpers/nbdfuse.js';
import { hasPeer, needPeers, run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { oneErrorLine, platterIn } from './cli.js';

const dir = tempDir();
const p = (args: string[]) => platterIn(dir, args);
const M = 1 << 20;

writeFileSync(join(dir, 'good.raw'), randomBytes(64 * 1024));
writeFileSync(join(dir, 'empty.raw'), '');
mkdirSync(join(dir, 'adir'));

describe('bad input: one error line and a non-zero exit', () => {
  it('missing file, for every command that reads one', () => {
    for (const args of [
      ['info', 'missing.raw'],
      ['map', 'missing.raw'],
      ['hash', 'missing.raw'],
      ['convert', '-O', 'raw', 'missing.raw', 'out.raw'],
      ['compare', 'good.raw', 'missing.raw'],
    ]) {
      const msg = oneErrorLine(p(args));
      assert.match(msg, /^missing\.raw: no such file or directory/, args.join(' '));
    }
    assert.ok(!existsSync(join(dir, 'out.raw')) && !existsSync(join(dir, 'out.raw.partial')));
  });

  it('a directory', () => {
    assert.match(oneErrorLine(p(['info', 'adir'])), /^adir: is a directory/);
    assert.match(oneErrorLine(p(['hash', 'adir'])), /^adir: is a directory/);
  });

  it('a zero-size image', () => {
    assert.match(oneErrorLine(p(['info', 'empty.raw'])), /^empty\.raw: .*empty/);
    assert.match(oneErrorLine(p(['convert', '-O', 'raw', 'empty.raw', 'e2.raw'])), /^empty\.raw: .*empty/);
    assert.ok(!existsSync(join(dir, 'e2.raw')));
    // A qcow2 of virtual size 0 is an image (qemu-img makes them): info shows it.
    assert.equal(p(['create', '-q', '-f', 'qcow2', 'zero.qcow2', '0']).status, 0);
    const i = p(['info', '--json', 'zero.qcow2']);
    assert.equal(i.status, 0, i.stderr);
    assert.equal(JSON.parse(i.stdout).virtualSize, 0);
  });

  it('an odd-size raw image is read exactly (not an error) and a truncated qcow2 is one error', () => {
    writeFileSync(join(dir, 'odd.raw'), randomBytes(1000));
    const r = p(['info', '--json', 'odd.raw']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).virtualSize, 1000);
    assert.equal(p(['convert', '-O', 'raw', 'odd.raw', 'odd2.raw']).status, 0);
    assert.ok(readFileSync(join(dir, 'odd2.raw')).equals(readFileSync(join(dir, 'odd.raw'))));
    // A qcow2 header cut short: the format's own error, naming the file.
    const q = Buffer.alloc(100);
    q.set([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3]);
    writeFileSync(join(dir, 'short.qcow2'), q);
    assert.match(oneErrorLine(p(['info', 'short.qcow2'])), /^short\.qcow2: /);
  });

  it("another format's signature is never read silently as raw", () => {
    // A VDI signature at 0x40 (and nothing else valid): an error, not a raw disk.
    const b = Buffer.alloc(64 * 1024);
    b.writeUInt32LE(0xbeda107f, 0x40);
    writeFileSync(join(dir, 'sig.img'), b);
    assert.match(oneErrorLine(p(['info', 'sig.img'])), /^sig\.img: /);
    const r = p(['info', '-f', 'raw', '--json', 'sig.img']);
    assert.equal(r.status, 0, '-f raw reads it as bytes');
    assert.equal(JSON.parse(r.stdout).format, 'raw');
  });

  it('a split set with a missing or short middle segment', () => {
    const seg = (n: number) => join(dir, `split.${String(n).padStart(3, '0')}`);
    for (let i = 1; i <= 3; i++) writeFileSync(seg(i), randomBytes(M));
    assert.equal(p(['info', '--json', 'split.001']).status, 0);
    truncateSync(seg(2), 1000);
    assert.match(oneErrorLine(p(['info', 'split.001'])), /split\.002.*short/);
    rmSync(seg(2));
    assert.match(oneErrorLine(p(['hash', 'split.001'])), /split\.002.*missing/);
  });

  it('unknown -f and -O formats, unknown hash algorithm', () => {
    assert.match(oneErrorLine(p(['info', '-f', 'bogus', 'good.raw'])), /unknown format 'bogus'/);
    assert.match(oneErrorLine(p(['convert', '-O', 'bogus', 'good.raw', 'b.raw'])), /unknown format 'bogus'/);
    assert.match(oneErrorLine(p(['create', '-f', 'bogus', 'b.raw', '1M'])), /unknown format 'bogus'/);
    assert.match(oneErrorLine(p(['hash', '-a', 'md5,crc32', 'good.raw'])), /unknown hash algorithm 'crc32'/);
    assert.ok(!existsSync(join(dir, 'b.raw')));
  });

  it('a size with a bad suffix', () => {
    for (const s of ['10X', '1.5.5G', '1KK', 'ten']) {
      assert.match(
        oneErrorLine(p(['create', '-f', 'raw', 'size.raw', s])),
        new RegExp(`invalid size '${s.replace('.', '\\.')}'`),
      );
    }
    assert.ok(!existsSync(join(dir, 'size.raw')));
  });

  it('an existing destination without --force is left untouched', () => {
    writeFileSync(join(dir, 'exists.raw'), 'precious');
    assert.match(
      oneErrorLine(p(['create', '-f', 'raw', 'exists.raw', '1M'])),
      /^exists\.raw: already exists.*--force/,
    );
    assert.match(
      oneErrorLine(p(['convert', '-O', 'raw', 'good.raw', 'exists.raw'])),
      /^exists\.raw: already exists.*--force/,
    );
    assert.equal(readFileSync(join(dir, 'exists.raw'), 'utf8'), 'precious');
    assert.equal(p(['convert', '--force', '-O', 'raw', 'good.raw', 'exists.raw']).status, 0);
    assert.ok(readFileSync(join(dir, 'exists.raw')).equals(readFileSync(join(dir, 'good.raw'))));
  });

  it('convert onto its own source; -c for a format that cannot compress', () => {
    assert.match(
      oneErrorLine(p(['convert', '--force', '-O', 'raw', 'good.raw', './good.raw'])),
      /destination is the source/,
    );
    assert.match(
      oneErrorLine(p(['convert', '-c', '-O', 'raw', 'good.raw', 'c.raw'])),
      /raw: .*cannot be compressed/,
    );
    assert.ok(!existsSync(join(dir, 'c.raw')));
    // ... also through a symbolic or a hard link, even with -U (no lock to stop it).
    symlinkSync('good.raw', join(dir, 'sym.raw'));
    linkSync(join(dir, 'good.raw'), join(dir, 'hard.raw'));
    for (const other of ['sym.raw', 'hard.raw'])
      assert.match(
        oneErrorLine(p(['convert', '--force', '-U', '-O', 'raw', 'good.raw', other])),
        /the destination is the source/,
      );
    // The destination is named as the user wrote it, not as the DST.partial it is made as.
    assert.match(
      oneErrorLine(p(['convert', '-O', 'vhd', 'good.raw', 'nodir/x.vhd'])),
      /^nodir\/x\.vhd: no such file/,
    );
    assert.match(
      oneErrorLine(p(['convert', '-c', '-O', 'vmdk', 'good.raw', 'cc.vmdk'])),
      /^cc\.vmdk: compression needs/,
    );
  });

  it("convert never replaces a destination's extent files without --force, nor the source's files with it", () => {
    // An existing file that a VMDK destination would name as its extent.
    for (const [sub, extent] of [
      ['monolithicFlat', 'v-flat.vmdk'],
      ['twoGbMaxExtentSparse', 'v-s001.vmdk'],
      ['twoGbMaxExtentFlat', 'v-f001.vmdk'],
    ]) {
      writeFileSync(join(dir, extent), 'precious');
      assert.match(
        oneErrorLine(p(['convert', '-O', 'vmdk', '-o', `subformat=${sub}`, 'good.raw', 'v.vmdk'])),
        new RegExp(`${extent}: already exists.*--force`),
      );
      assert.equal(readFileSync(join(dir, extent), 'utf8'), 'precious', `${sub}: ${extent} untouched`);
      assert.ok(!existsSync(join(dir, 'v.vmdk')), `${sub}: no descriptor left`);
      rmSync(join(dir, extent));
    }
    // The source is the file the destination would name as its extent, or the
    // destination is the source's extent: refused even with --force and -U.
    writeFileSync(join(dir, 'w-flat.vmdk'), readFileSync(join(dir, 'good.raw')));
    const args = ['convert', '--force', '-U', '-O', 'vmdk', '-o', 'subformat=monolithicFlat'];
    assert.match(
      oneErrorLine(p([...args, '-f', 'raw', 'w-flat.vmdk', 'w.vmdk'])),
      /w-flat\.vmdk: is a file of the source/,
    );
    assert.ok(readFileSync(join(dir, 'w-flat.vmdk')).equals(readFileSync(join(dir, 'good.raw'))));
    assert.equal(p([...args, 'good.raw', 'w.vmdk']).status, 0);
    assert.match(
      oneErrorLine(p(['convert', '--force', '-U', '-O', 'raw', 'w.vmdk', 'w-flat.vmdk'])),
      /^w-flat\.vmdk: is a file of the source/,
    );
    assert.ok(readFileSync(join(dir, 'w-flat.vmdk')).equals(readFileSync(join(dir, 'good.raw'))));
  });

  it('--image-opts force=on, as the error about a VHD checksum says, reads the image anyway', (t) => {
    if (!needPeers(t, 'qemu-img')) return;
    const img = join(dir, 'sum.vhd');
    run('qemu-img', ['create', '-q', '-f', 'vpc', img, '4M']);
    const b = readFileSync(img);
    b.writeUInt32BE(1, 512 + 36); // the dynamic header's checksum
    writeFileSync(img, b);
    assert.match(
      oneErrorLine(p(['info', 'sum.vhd'])),
      /checksum .* open with --image-opts force=on to read it anyway/,
    );
    // check opens it too, and reports the checksum as what is wrong (exit 2).
    const chk = p(['check', '--image-opts', 'force=on', 'sum.vhd']);
    assert.equal(chk.status, 2, chk.stderr);
    assert.match(chk.stdout, /checksum does not match/);
    for (const args of [['info'], ['hash'], ['map'], ['convert', '-O', 'raw']]) {
      const extra = args[0] === 'convert' ? ['sum.raw'] : [];
      const r = p([...args, '--image-opts', 'force=on', 'sum.vhd', ...extra]);
      assert.equal(r.status, 0, `${args.join(' ')}: ${r.stderr}`);
    }
    assert.equal(p(['compare', '--image-opts', 'force=on', 'sum.vhd', 'sum.raw']).status, 0);
  });

  it('a missing backing file deep in a chain: named with the image that refers to it; info shows the top alone', () => {
    assert.equal(p(['create', '-q', '-f', 'qcow2', 'c1.qcow2', '1M']).status, 0);
    assert.equal(p(['create', '-q', '-f', 'qcow2', '-b', 'c1.qcow2', '-F', 'qcow2', 'c2.qcow2']).status, 0);
    assert.equal(p(['create', '-q', '-f', 'qcow2', '-b', 'c2.qcow2', '-F', 'qcow2', 'c3.qcow2']).status, 0);
    rmSync(join(dir, 'c1.qcow2'));
    const missing = /c2\.qcow2: backing file c1\.qcow2 not found/;
    for (const args of [
      ['map', 'c3.qcow2'],
      ['convert', '-O', 'raw', 'c3.qcow2', 'c3.raw'],
      ['info', '--backing-chain', 'c3.qcow2'],
    ])
      assert.match(oneErrorLine(p(args)), missing, args.join(' '));
    const r = p(['info', '--json', 'c3.qcow2']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(JSON.parse(r.stdout).backingFilename, 'c2.qcow2');
    assert.match(r.stderr, /^platter: warning: .*c2\.qcow2: backing file c1\.qcow2 not found.*\n$/);
  });

  it('create -b onto a layer of its own backing chain (with --force): refused, the chain untouched', () => {
    assert.equal(p(['create', '-f', 'qcow2', 'base.qcow2', '1M']).status, 0);
    mkdirSync(join(dir, 'sub'), { recursive: true });
    assert.equal(
      p(['create', '-f', 'qcow2', '-b', '../base.qcow2', '-F', 'qcow2', 'sub/top.qcow2']).status,
      0,
    );
    const before = readFileSync(join(dir, 'base.qcow2'));
    for (const [backing, image] of [
      ['sub/top.qcow2', 'base.qcow2'], // base ← sub/top: base may not sit on top
      ['base.qcow2', 'base.qcow2'], // its own backing file
    ]) {
      assert.match(
        oneErrorLine(p(['create', '--force', '-f', 'qcow2', '-b', backing, '-F', 'qcow2', image])),
        new RegExp(`^${image}: would be in its own backing chain \\(through ${backing}\\)`),
      );
    }
    assert.ok(readFileSync(join(dir, 'base.qcow2')).equals(before), 'base.qcow2 unchanged');
  });

  it('an unreadable file (when not running as root)', (t) => {
    if (process.getuid?.() === 0) {
      t.skip('root reads every file');
      return;
    }
    writeFileSync(join(dir, 'secret.raw'), randomBytes(4096));
    chmodSync(join(dir, 'secret.raw'), 0);
    assert.match(oneErrorLine(p(['info', 'secret.raw'])), /^secret\.raw: permission denied/);
  });

  it('an unreadable device: a block device we may not open', (t) => {
    const dev = ['/dev/vda', '/dev/sda', '/dev/nvme0n1'].find((d) => existsSync(d));
    if (!dev || process.getuid?.() === 0 || !hasPeer('true')) {
      t.skip('needs a block device and a non-root user');
      return;
    }
    assert.match(oneErrorLine(p(['info', dev])), new RegExp(`^${dev}: permission denied`));
  });

  it('a source that fails mid-convert (EIO on the host-copy path): one line, no destination', async (t) => {
    if (!needPeers(t, 'nbdkit', 'nbdfuse', 'fusermount3')) return;
    if (!existsSync('/dev/fuse') || process.getuid?.() !== 0) return t.skip('needs root and /dev/fuse');
    // 64 MiB of data; reads of sector 100000 (at 48.8 MiB, in the second host batch) fail with EIO.
    writeFileSync(join(dir, 'fail-src.raw'), randomBytes(64 * M));
    const map = join(dir, 'fail.map');
    writeFileSync(map, '# Mapfile\n0x0 + 1\n0x0 0x030D4000 +\n0x030D4000 0x200 -\n0x030D4200 0x00F2BE00 +\n');
    const disk = await nbdkitAsFile(dir, [
      '--filter=ddrescue',
      'file',
      join(dir, 'fail-src.raw'),
      `ddrescue-mapfile=${map}`,
    ]);
    try {
      const line = oneErrorLine(p(['convert', '-O', 'raw', disk.path, 'fail-out.raw']));
      assert.match(line, new RegExp(`^${disk.path}: input/output error \\(read at offset \\d+\\)$`));
      assert.equal(existsSync(join(dir, 'fail-out.raw')), false);
      assert.equal(existsSync(join(dir, 'fail-out.raw.partial')), false);
    } finally {
      await disk.unmount();
    }
  });
});
