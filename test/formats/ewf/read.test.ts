import assert from 'node:assert/strict';
import { copyFileSync, readdirSync, readFileSync, rmSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import { segmentName } from '../../../src/formats/ewf/names.js';
import { must, needPeers } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { ewfacquire, makeSource, md5, openRo, readAll, sha256 } from './helpers.js';

const dir = tempDir('platter-ewf-read-');
const src = makeSource(dir);

describe('ewf: segment names', () => {
  it('counts E01..E99, then EAA..EZZ, FAA ...', () => {
    assert.equal(segmentName('/x/a.E01', 2), '/x/a.E02');
    assert.equal(segmentName('/x/a.E01', 99), '/x/a.E99');
    assert.equal(segmentName('/x/a.E01', 100), '/x/a.EAA');
    assert.equal(segmentName('/x/a.E01', 101), '/x/a.EAB');
    assert.equal(segmentName('/x/a.E01', 126), '/x/a.EBA');
    assert.equal(segmentName('/x/a.E01', 100 + 676), '/x/a.FAA');
    assert.equal(segmentName('/x/a.e01', 100), '/x/a.eaa');
  });
});

describe('ewf: reading ewfacquire images', () => {
  const cases: Array<[string, string[]]> = [
    [
      'encase6 fast, 1 MiB segments, case metadata, sha1',
      ['-f', 'encase6', '-c', 'fast', '-S', '1M', '-d', 'sha1'],
    ],
    ['encase6 uncompressed, one segment', ['-f', 'encase6', '-c', 'none']],
    ['encase6 best, 128-sector chunks', ['-f', 'encase6', '-c', 'best', '-b', '128']],
    ['encase5 fast, 1 MiB segments', ['-f', 'encase5', '-c', 'fast', '-S', '1M']],
    ['encase7 none, 1 MiB segments', ['-f', 'encase7', '-c', 'none', '-S', '1M']],
    ['ewf (SMART layout) fast, 1 MiB segments', ['-f', 'ewf', '-c', 'fast', '-S', '1M']],
    ['linen6 fast', ['-f', 'linen6', '-c', 'fast']],
    ['ftk none', ['-f', 'ftk', '-c', 'none']],
  ];
  cases.forEach(([name, args], n) => {
    it(`${name}: byte-identical, hashes equal md5sum/sha256sum`, async (t) => {
      if (!needPeers(t, 'ewfacquire', 'md5sum', 'sha256sum')) return;
      const target = join(dir, `img${n}`);
      ewfacquire(src.path, target, [
        ...args,
        '-C',
        'case 7',
        '-E',
        'ev-1',
        '-e',
        'Jane Examiner',
        '-D',
        'a description',
        '-N',
        'some notes',
      ]);
      const first = readdirSync(dir).find((f) => f.startsWith(`img${n}.`) && /\.[eE]01$/.test(f))!;
      const disk = await openRo(join(dir, first));
      try {
        assert.equal(disk.size, src.data.length);
        const got = await readAll(disk);
        assert.ok(got.equals(src.data), 'content equals the source');
        assert.equal(md5(got), must('md5sum', [src.path]).split(' ')[0]);
        assert.equal(sha256(got), must('sha256sum', [src.path]).split(' ')[0]);
        // unaligned read across a chunk boundary
        const part = Buffer.alloc(70001);
        await disk.read(part, 32768 - 5);
        assert.ok(part.equals(src.data.subarray(32768 - 5, 32768 - 5 + 70001)));
        const info = await disk.info();
        // biome-ignore lint/suspicious/noExplicitAny: details is loose JSON
        const d = info.details as Record<string, any>;
        assert.equal(info.format, 'ewf');
        assert.equal(d.storedHashes.md5, md5(src.data));
        if (args.includes('sha1'))
          assert.equal(d.storedHashes.sha1, must('sha1sum', [src.path]).split(' ')[0]);
        const nseg = readdirSync(dir).filter((f) => f.startsWith(`img${n}.`)).length;
        assert.equal(d.segmentFiles.length, nseg);
        if (args.includes('1M')) assert.ok(nseg >= 2, 'several segments');
        if (!args.includes('ewf')) {
          assert.equal(d.caseMetadata.caseNumber, 'case 7');
          assert.equal(d.caseMetadata.evidenceNumber, 'ev-1');
          assert.equal(d.caseMetadata.examiner, 'Jane Examiner');
          assert.equal(d.caseMetadata.description, 'a description');
          assert.equal(d.caseMetadata.notes, 'some notes');
        }
        assert.deepEqual(d.acquisitionErrors, []);
      } finally {
        await disk.close();
      }
    });
  });
});

describe('ewf: broken sets', () => {
  const expectErr = async (path: string, code: string, re: RegExp): Promise<void> => {
    await assert.rejects(
      async () => {
        const d = await openRo(path);
        try {
          await readAll(d);
        } finally {
          await d.close();
        }
      },
      (e: unknown) => e instanceof PlatterError && e.code === code && re.test(e.message),
    );
  };

  it('missing middle segment, truncated segment, flipped chunk byte', async (t) => {
    if (!needPeers(t, 'ewfacquire')) return;
    const base = join(dir, 'broken');
    ewfacquire(src.path, base, ['-f', 'encase6', '-c', 'none', '-S', '1M']);
    const files = readdirSync(dir)
      .filter((f) => f.startsWith('broken.'))
      .sort();
    assert.ok(files.length >= 3, `three segments or more (${files})`);
    const e02 = join(dir, 'broken.E02');
    const keep = readFileSync(e02);

    rmSync(e02);
    await expectErr(`${base}.E01`, 'ENOENT', /missing segment file 2/);

    writeFileSync(e02, keep.subarray(0, keep.length - 1000));
    await expectErr(`${base}.E01`, 'ECORRUPT', /broken\.E02.*(past the end|truncated)/);

    const flipped = Buffer.from(keep);
    flipped[5000] ^= 0x40; // inside the first (uncompressed) chunk of E02
    writeFileSync(e02, flipped);
    await expectErr(`${base}.E01`, 'ECORRUPT', /broken\.E02.*chunk \d+ .*Adler-32 checksum/);
    writeFileSync(e02, keep);

    const d = await openRo(`${base}.E01`);
    assert.ok((await readAll(d)).equals(src.data));
    await d.close();
  });

  it('opening a later segment directly says which segment it is', async (t) => {
    if (!needPeers(t, 'ewfacquire')) return;
    const base = join(dir, 'later');
    ewfacquire(src.path, base, ['-f', 'encase6', '-c', 'fast', '-S', '1M']);
    copyFileSync(`${base}.E02`, join(dir, 'later2.E01'));
    await expectErr(join(dir, 'later2.E01'), 'ECORRUPT', /segment number 2, expected 1/);
    truncateSync(`${base}.E01`, 12);
    await expectErr(`${base}.E01`, 'ECORRUPT', /too short for an EWF file header/);
  });
});
