import assert from 'node:assert/strict';
import { readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { PlatterError } from '../../../src/core/errors.js';
import { createImage, openImage } from '../../../src/formats/open.js';
import { nodeHost } from '../../../src/storage/host.js';
import { must, needPeers, run } from '../../helpers/peers.js';
import { tempDir } from '../../helpers/tmp.js';
import { makeSource, md5, openRo, readAll } from './helpers.js';

const dir = tempDir('platter-ewf-write-');
const src = makeSource(dir);

/** createImage + open for writing + sequential 1 MiB writes + close, as convert does. */
async function writeE01(
  path: string,
  data: Buffer,
  options: Record<string, string>,
  step = 1 << 20,
): Promise<void> {
  await createImage(nodeHost, path, { format: 'ewf', size: data.length, options });
  const disk = await openImage(nodeHost, path, { readOnly: false });
  try {
    for (let o = 0; o < data.length; o += step)
      await disk.write(data.subarray(o, Math.min(data.length, o + step)), o);
  } finally {
    await disk.close();
  }
}

const META = {
  case_number: 'CASE-42',
  evidence_number: 'EV 9',
  examiner: 'Ada Examiner',
  description: 'USB stick from desk',
  notes: 'seized 2026-11-25',
};

describe('ewf: writing E01', () => {
  for (const compression of ['none', 'fast', 'best']) {
    it(`compression=${compression}, 1 MiB segments: ewfverify, ewfinfo, ewfexport and platter agree`, async (t) => {
      if (!needPeers(t, 'ewfverify', 'ewfinfo', 'ewfexport')) return;
      const path = join(dir, `w-${compression}.E01`);
      await writeE01(path, src.data, { ...META, compression, segment_size: '1M' });
      const segs = readdirSync(dir).filter((f) => f.startsWith(`w-${compression}.E`));
      if (compression !== 'none') assert.ok(segs.length >= 2, `several segments: ${segs}`);
      else assert.ok(segs.length >= 4, `several segments: ${segs}`);
      for (const f of segs)
        assert.ok(statSync(join(dir, f)).size <= (1 << 20) + 65536, `${f} near the segment size`);

      const v = run('ewfverify', ['-q', path]);
      assert.equal(v.status, 0, `ewfverify: ${v.stdout}${v.stderr}`);
      assert.match(v.stdout, new RegExp(`MD5 hash stored in file:\\s+${md5(src.data)}`));

      const info = must('ewfinfo', [path]);
      assert.match(info, /Case number:\s+CASE-42/);
      assert.match(info, /Evidence number:\s+EV 9/);
      assert.match(info, /Examiner name:\s+Ada Examiner/);
      assert.match(info, /Description:\s+USB stick from desk/);
      assert.match(info, /Notes:\s+seized 2026-11-25/);
      assert.match(info, /SHA1:\s+[0-9a-f]{40}/);

      const out = join(dir, `x-${compression}`);
      must('ewfexport', ['-q', '-u', '-f', 'raw', '-t', out, path]);
      const exported = readFileSync(
        readdirSync(dir)
          .filter((f) => f.startsWith(`x-${compression}`))
          .map((f) => join(dir, f))[0],
      );
      assert.ok(exported.equals(src.data), 'ewfexport gives the same bytes');

      const disk = await openRo(path);
      try {
        assert.ok((await readAll(disk)).equals(src.data));
        const d = (await disk.info()).details as Record<string, unknown>;
        assert.equal((d.caseMetadata as Record<string, string>).examiner, 'Ada Examiner');
        if (compression === 'none') assert.equal(d.compressedChunks, 0);
        else
          assert.ok(
            (d.compressedChunks as number) > 0 && (d.compressedChunks as number) < (d.chunkCount as number),
          );
      } finally {
        await disk.close();
      }
    });
  }

  it('odd size and 8 KiB chunks: padded to a sector, ewfverify clean', async (t) => {
    if (!needPeers(t, 'ewfverify')) return;
    const data = src.data.subarray(0, 200 * 1024 + 1000);
    const path = join(dir, 'odd.E01');
    await writeE01(path, data, { chunk_size: '8K', compression: 'fast' }, 12345);
    const v = run('ewfverify', ['-q', path]);
    assert.equal(v.status, 0, v.stdout + v.stderr);
    const disk = await openRo(path);
    assert.equal(disk.size, 200 * 1024 + 1024);
    const got = await readAll(disk);
    assert.ok(got.subarray(0, data.length).equals(data));
    assert.ok(got.subarray(data.length).every((b) => b === 0));
    await disk.close();
  });

  it('refuses to open a finished E01 for writing and a name without .E01', async () => {
    const path = join(dir, 'w-none.E01');
    await assert.rejects(
      openImage(nodeHost, path, { readOnly: false }),
      (e: unknown) => e instanceof PlatterError && e.code === 'EUNSUPPORTED',
    );
    await assert.rejects(
      createImage(nodeHost, join(dir, 'noext.img'), { format: 'ewf', size: 1 << 20 }),
      (e: unknown) => e instanceof PlatterError && e.code === 'EINVAL',
    );
    await assert.rejects(
      createImage(nodeHost, join(dir, 'bad.E01'), {
        format: 'ewf',
        size: 1 << 20,
        options: { colour: 'red' },
      }),
      (e: unknown) => e instanceof PlatterError && /unknown option 'colour'/.test(e.message),
    );
  });
});

describe('ewf: sequential writer', () => {
  it('records acquisition errors in error2 (ewfinfo -e lists them) and given hashes', async (t) => {
    if (!needPeers(t, 'ewfinfo', 'ewfverify')) return;
    const { createEwfWriter } = await import('../../../src/formats/ewf/writer.js');
    const path = join(dir, 'err.E01');
    const first = await nodeHost.create(path, {});
    const data = Buffer.from(src.data.subarray(0, 1 << 20));
    data.fill(0, 4096, 4096 + 1536);
    data.fill(0, 500 * 512, 501 * 512);
    const w = await createEwfWriter(first, async () => assert.fail('one segment'), {
      size: data.length,
      compression: 'fast',
      hashes: 'given',
    });
    for (let o = 0; o < data.length; o += 100_000)
      await w.write(data.subarray(o, Math.min(data.length, o + 100_000)));
    w.addErrors([
      { offset: 4096, length: 1536 },
      { offset: 500 * 512, length: 512 },
    ]);
    const { createHash } = await import('node:crypto');
    const r = await w.finish({
      md5: createHash('md5').update(data).digest(),
      sha1: createHash('sha1').update(data).digest(),
    });
    await w.abort();
    assert.equal(r.md5, md5(data));
    const info = must('ewfinfo', ['-e', path]);
    assert.match(info, /at sector\(s\): 8 - 10 number: 3/);
    assert.match(info, /at sector\(s\): 500 - 500 number: 1/);
    assert.equal(run('ewfverify', ['-q', path]).status, 0);
    const disk = await openRo(path);
    const d = (await disk.info()).details as Record<string, unknown>;
    assert.deepEqual(d.acquisitionErrors, [
      { offset: 4096, length: 1536 },
      { offset: 500 * 512, length: 512 },
    ]);
    await disk.close();
  });
});
