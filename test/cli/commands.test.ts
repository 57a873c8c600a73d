/**
 * What a user sees: golden outputs of info, create, convert, compare, map and
 * hash on small raw images (run in a temp dir with relative paths, so the
 * output is stable; the host-dependent `disk size:` line is checked apart).
 */
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, openSync, readFileSync, statSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { tempDir } from '../helpers/tmp.js';
import { platterIn } from './cli.js';

const dir = tempDir();
const p = (args: string[]) => platterIn(dir, args);
const M = 1 << 20;

function pwrite(file: string, data: Uint8Array, offset: number): void {
  const fd = openSync(join(dir, file), 'r+');
  writeSync(fd, data, 0, data.length, offset);
  closeSync(fd);
}

const DATA = randomBytes(8192);

describe('platter commands (golden output)', () => {
  it('create prints what it made, like qemu-img', () => {
    const r = p(['create', '-f', 'raw', 'disk.raw', '10M']);
    assert.equal(r.stderr, '');
    assert.equal(r.stdout, "Formatting 'disk.raw', fmt=raw size=10485760\n");
    assert.equal(r.status, 0);
    assert.equal(statSync(join(dir, 'disk.raw')).size, 10 * M);
    pwrite('disk.raw', DATA, M);
    const j = p(['create', '-f', 'raw', '--json', 'j.raw', '1G']);
    assert.deepEqual(JSON.parse(j.stdout), {
      filename: 'j.raw',
      format: 'raw',
      virtualSize: 1 << 30,
      options: {},
    });
    assert.equal(p(['create', '-q', '-f', 'raw', 'q.raw', '1K']).stdout, '');
    // qemu-img's name for VHD is understood too.
    assert.equal(p(['create', '-q', '-f', 'vpc', 'v.vhd', '1M']).status, 0);
    const i = p(['info', '--json', '-f', 'vpc', 'v.vhd']);
    assert.equal(JSON.parse(i.stdout).format, 'vhd', i.stderr);
  });

  it('info: text and JSON', () => {
    const r = p(['info', 'disk.raw']);
    assert.equal(r.status, 0, r.stderr);
    const lines = r.stdout.split('\n');
    assert.match(lines[3], /^disk size: \d/);
    lines.splice(3, 1);
    assert.equal(
      lines.join('\n'),
      'image: disk.raw\nfile format: raw\nvirtual size: 10 MiB (10485760 bytes)\n',
    );
    const j = JSON.parse(p(['info', '--json', 'disk.raw']).stdout);
    assert.equal(typeof j.allocatedSize, 'number');
    assert.ok(j.allocatedSize >= 8192 && j.allocatedSize < 10 * M, 'sparse file: small allocation');
    delete j.allocatedSize;
    assert.deepEqual(j, {
      filename: 'disk.raw',
      format: 'raw',
      virtualSize: 10 * M,
      granularity: 512,
      files: ['disk.raw'],
    });
  });

  it('map: qemu-style JSON lines and a text table', () => {
    const r = p(['map', '--json', 'disk.raw']);
    assert.equal(
      r.stdout,
      '[{"start":0,"length":1048576,"depth":0,"present":true,"zero":true,"data":false,"offset":0},\n' +
        '{"start":1048576,"length":8192,"depth":0,"present":true,"zero":false,"data":true,"offset":1048576},\n' +
        '{"start":1056768,"length":9428992,"depth":0,"present":true,"zero":true,"data":false,"offset":1056768}]\n',
    );
    assert.equal(
      p(['map', 'disk.raw']).stdout,
      'Offset              Length              Kind    Depth  File\n' +
        '0x0                 0x100000            zero    0      disk.raw\n' +
        '0x100000            0x2000              data    0      disk.raw\n' +
        '0x102000            0x8fe000            zero    0      disk.raw\n',
    );
  });

  it('hash: BSD tag lines and JSON, equal to hashing the file bytes', () => {
    const bytes = readFileSync(join(dir, 'disk.raw'));
    const h = (a: string) => createHash(a).update(bytes).digest('hex');
    const r = p(['hash', '-a', 'md5,sha1,sha256,sha512', 'disk.raw']);
    assert.equal(
      r.stdout,
      `MD5 (disk.raw) = ${h('md5')}\nSHA1 (disk.raw) = ${h('sha1')}\nSHA256 (disk.raw) = ${h('sha256')}\nSHA512 (disk.raw) = ${h('sha512')}\n`,
    );
    assert.equal(p(['hash', 'disk.raw']).stdout, `SHA256 (disk.raw) = ${h('sha256')}\n`, 'sha256 by default');
    assert.deepEqual(JSON.parse(p(['hash', '--json', '-a', 'md5', 'disk.raw']).stdout), {
      image: 'disk.raw',
      virtualSize: 10 * M,
      hashes: { md5: h('md5') },
    });
  });

  it('convert keeps the destination sparse, prints nothing, leaves no .partial', () => {
    const r = p(['convert', '-O', 'raw', 'disk.raw', 'copy.raw']);
    assert.equal(r.status, 0, r.stderr);
    assert.equal(r.stdout + r.stderr, '');
    const st = statSync(join(dir, 'copy.raw'));
    assert.equal(st.size, 10 * M);
    assert.ok(st.blocks * 512 <= 64 * 1024, `allocated ${st.blocks * 512}`);
    assert.ok(!existsSync(join(dir, 'copy.raw.partial')));
    assert.ok(readFileSync(join(dir, 'copy.raw')).equals(readFileSync(join(dir, 'disk.raw'))));
  });

  it('convert --verify and --json', () => {
    const v = p(['convert', '--verify', '-O', 'raw', 'disk.raw', 'v.raw']);
    const sha = createHash('sha256')
      .update(readFileSync(join(dir, 'disk.raw')))
      .digest('hex');
    assert.equal(v.stdout, `Verified: sha256 ${sha}\n`);
    const j = JSON.parse(p(['convert', '--json', '-O', 'raw', 'disk.raw', 'j2.raw']).stdout);
    assert.deepEqual(j, {
      source: 'disk.raw',
      destination: 'j2.raw',
      format: 'raw',
      virtualSize: 10 * M,
      bytesRead: 8192,
      bytesWritten: 8192,
    });
  });

  it('compare: identical, first mismatch (sector), --all, --json, exit codes', () => {
    const same = p(['compare', 'disk.raw', 'copy.raw']);
    assert.equal(same.stdout, 'Images are identical.\n');
    assert.equal(same.status, 0);
    pwrite('copy.raw', Uint8Array.of(1), 5 * M + 700);
    pwrite('copy.raw', Uint8Array.of(1, 1), 7 * M + 1023);
    const diff = p(['compare', 'disk.raw', 'copy.raw']);
    assert.equal(diff.stdout, `Content mismatch at offset ${5 * M + 512}!\n`);
    assert.equal(diff.status, 1);
    const all = p(['compare', '--all', 'disk.raw', 'copy.raw']);
    assert.equal(
      all.stdout,
      `Content mismatch at offset ${5 * M + 512}! (512 bytes)\nContent mismatch at offset ${7 * M + 512}! (1024 bytes)\n`,
    );
    const j = JSON.parse(p(['compare', '--all', '--json', 'disk.raw', 'copy.raw']).stdout);
    assert.deepEqual(j, {
      identical: false,
      sizeA: 10 * M,
      sizeB: 10 * M,
      firstMismatch: 5 * M + 512,
      ranges: [
        { offset: 5 * M + 512, length: 512 },
        { offset: 7 * M + 512, length: 1024 },
      ],
    });
    const sizes = p(['compare', 'disk.raw', 'j.raw']);
    // The first difference lies in the part both have: no size warning (qemu-img gives none).
    assert.equal(sizes.stdout, `Content mismatch at offset ${M}!\n`);
    assert.equal(p(['compare', 'disk.raw', 'missing.raw']).status, 2, 'an error exits 2');
  });

  it('--help lists the commands', () => {
    const r = p(['--help']);
    for (const c of ['info', 'create', 'convert', 'compare', 'map', 'hash'])
      assert.match(r.stdout, new RegExp(`\\n  ${c} `));
  });
});
