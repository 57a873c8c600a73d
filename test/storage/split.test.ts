import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, rmSync, statSync, truncateSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PlatterError } from '../../src/core/errors.js';
import { openFile } from '../../src/storage/file.js';
import { nodeHost } from '../../src/storage/host.js';
import { memoryStorage } from '../../src/storage/memory.js';
import { native } from '../../src/storage/native.js';
import { createSplit, segmentPath, splitName, splitStorage } from '../../src/storage/split.js';
import { tempDir } from '../helpers/tmp.js';

const dir = tempDir();
const MiB = 1024 * 1024;

const isCode = (code: string, file?: string) => (e: unknown) =>
  e instanceof PlatterError && e.code === code && (file === undefined || e.message.includes(file));

/** Splits `data` with coreutils split into NAME.001… (or .000… with start 0). */
function makeSet(name: string, data: Buffer, segment: number, start = 1): string[] {
  const whole = join(dir, `${name}.whole`);
  writeFileSync(whole, data);
  execFileSync('split', [
    '-b',
    String(segment),
    '-a',
    '3',
    `--numeric-suffixes=${start}`,
    whole,
    join(dir, `${name}.`),
  ]);
  rmSync(whole);
  const out: string[] = [];
  for (let i = start; existsSync(join(dir, `${name}.${String(i).padStart(3, '0')}`)); i++) {
    out.push(join(dir, `${name}.${String(i).padStart(3, '0')}`));
  }
  return out;
}

const concat = (files: string[]): Buffer => Buffer.concat(files.map((f) => readFileSync(f)));

describe('split names', () => {
  it('keeps the width and widens past 999', () => {
    const s = splitName('/x/disk.001')!;
    assert.deepEqual(s, { prefix: '/x/disk.', index: 1, width: 3 });
    assert.equal(segmentPath(s, 10), '/x/disk.010');
    assert.equal(segmentPath(s, 1000), '/x/disk.1000');
    assert.equal(splitName('/x/disk.01'), undefined, 'two digits are not a split name');
    assert.equal(splitName('/x/disk.img'), undefined);
  });
});

describe('split storage: opening a set', () => {
  it('NAME.001 opens the whole set made by coreutils split; reads straddle segments', async () => {
    const data = randomBytes(3 * MiB + 12345);
    const files = makeSet('set', data, MiB);
    assert.equal(files.length, 4);
    const s = await nodeHost.open(files[0], { write: false });
    try {
      assert.deepEqual(s.files, files);
      assert.equal(await s.size(), data.length);
      for (const [off, len] of [
        [0, data.length],
        [MiB - 1, 2],
        [MiB - 10, 2 * MiB + 20],
        [data.length - 1, 1],
      ]) {
        const got = Buffer.alloc(len);
        await s.read(got, off);
        assert.ok(got.equals(data.subarray(off, off + len)), `read ${off}+${len}`);
      }
      await assert.rejects(s.read(Buffer.alloc(2), data.length - 1), isCode('EIO'));
      if (native.available) {
        const exts = await s.extents!(0, data.length);
        assert.deepEqual(exts, [{ offset: 0, length: data.length, kind: 'data' }]);
      }
      assert.equal(
        await s.allocatedSize!(),
        files.reduce((a, f) => a + statSync(f).blocks * 512, 0),
      );
    } finally {
      await s.close();
    }
  });

  it('NAME.000 numbering works too; a lone NAME.001 is a plain file', async () => {
    const data = randomBytes(2 * MiB + 1);
    const files = makeSet('zero', data, MiB, 0);
    assert.match(files[0], /\.000$/);
    const s = await nodeHost.open(files[0], { write: false });
    const got = Buffer.alloc(data.length);
    await s.read(got, 0);
    await s.close();
    assert.ok(got.equals(data));
    assert.equal(s.files?.length, 3);

    const lone = join(dir, 'lone.001');
    writeFileSync(lone, Buffer.alloc(1000, 3));
    const l = await nodeHost.open(lone, { write: false });
    assert.deepEqual(l.files, [lone]);
    assert.equal(await l.size(), 1000);
    await l.close();
  });

  it('a missing middle segment is an error naming it', async () => {
    const files = makeSet('gap', randomBytes(4 * MiB), MiB);
    rmSync(files[2]);
    await assert.rejects(nodeHost.open(files[0], { write: false }), (e: unknown) => {
      assert.ok(isCode('ENOENT', files[2])(e), String(e));
      assert.match((e as Error).message, /segment 3 of the split set .* is missing/);
      return true;
    });
  });

  it('a short middle segment is an error naming it', async () => {
    const files = makeSet('short', randomBytes(4 * MiB), MiB);
    truncateSync(files[1], MiB - 512);
    await assert.rejects(nodeHost.open(files[0], { write: false }), (e: unknown) => {
      assert.ok(isCode('ECORRUPT', files[1])(e), String(e));
      assert.match((e as Error).message, /segment is short: 1048064 bytes/);
      return true;
    });
    // A short last segment is normal.
    const ok = makeSet('lastshort', randomBytes(2 * MiB + 5), MiB);
    const s = await nodeHost.open(ok[0], { write: false });
    assert.equal(await s.size(), 2 * MiB + 5);
    await s.close();
  });

  it('a missing first segment is ENOENT naming it', async () => {
    const p = join(dir, 'absent.001');
    await assert.rejects(nodeHost.open(p, { write: false }), isCode('ENOENT', p));
  });

  it('writes land in the right segments; a writer rolls over past the last one', async () => {
    const data = randomBytes(2 * MiB + 100);
    const files = makeSet('rw', data, MiB);
    const s = await nodeHost.open(files[0], { write: true });
    try {
      const patch = randomBytes(300);
      await s.write(patch, MiB - 150);
      data.set(patch, MiB - 150);
      // Past the end of the last segment (2 MiB + 100): fills it to 1 MiB and creates rw.004.
      const tail = randomBytes(MiB);
      await s.write(tail, 3 * MiB - 10);
      assert.equal(await s.size(), 4 * MiB - 10);
      assert.equal(s.files?.length, 4);
    } finally {
      await s.close();
    }
    assert.equal(statSync(files[2]).size, MiB);
    assert.equal(statSync(join(dir, 'rw.004')).size, MiB - 10);
    const all = concat([...files, join(dir, 'rw.004')]);
    assert.ok(all.subarray(0, data.length).equals(data));
  });

  it('every segment of an open writer is locked', async (t) => {
    if (!native.available) {
      t.skip('no native addon: no locks');
      return;
    }
    const files = makeSet('locked', randomBytes(3 * MiB), MiB);
    const s = await nodeHost.open(files[0], { write: true });
    try {
      await assert.rejects(openFile(files[2], { write: false }), isCode('ELOCKED', files[2]));
    } finally {
      await s.close();
    }
    const r = await openFile(files[2], { write: false });
    await r.close();
  });
});

describe('split storage: createSplit', () => {
  it('creates NAME.002… as writes pass the segment size; files lists them', async () => {
    const first = join(dir, 'new.001');
    const s = await createSplit(nodeHost, first, MiB);
    const data = randomBytes(3 * MiB + MiB / 2);
    try {
      assert.deepEqual(s.files, [first]);
      // Out of order, in parallel, straddling boundaries.
      const chunks = [3, 0, 2, 1].map((k) => [k * 900_000, Math.min(900_000, data.length - k * 900_000)]);
      chunks.push([3_600_000, data.length - 3_600_000]);
      await Promise.all(chunks.map(([o, l]) => s.write(data.subarray(o, o + l), o)));
      assert.equal(await s.size(), data.length);
      assert.deepEqual(
        s.files,
        [1, 2, 3, 4].map((i) => join(dir, `new.00${i}`)),
      );
      await s.flush();
    } finally {
      await s.close();
    }
    const files = [1, 2, 3, 4].map((i) => join(dir, `new.00${i}`));
    assert.deepEqual(
      files.map((f) => statSync(f).size),
      [MiB, MiB, MiB, MiB / 2],
    );
    assert.ok(concat(files).equals(data));
    const again = await nodeHost.open(first, { write: false });
    const got = Buffer.alloc(data.length);
    await again.read(got, 0);
    await again.close();
    assert.ok(got.equals(data));
  });

  it('truncate grows a set across segments', async () => {
    const first = join(dir, 'grow.001');
    const s = await createSplit(nodeHost, first, MiB);
    await s.truncate(2 * MiB + 7);
    assert.equal(await s.size(), 2 * MiB + 7);
    assert.equal(s.files?.length, 3);
    await s.truncate(MiB + 1);
    assert.equal(await s.size(), MiB + 1);
    await s.close();
    assert.equal(statSync(join(dir, 'grow.002')).size, 1);
    assert.equal(existsSync(join(dir, 'grow.003')), false, 'an emptied last segment is removed');
  });

  it('refuses existing segments without force; force removes a stale tail', async () => {
    const first = join(dir, 'old.001');
    const files = makeSet('old', randomBytes(3 * MiB), MiB);
    assert.equal(files[0], first);
    await assert.rejects(createSplit(nodeHost, first, MiB), isCode('EEXIST', first));
    rmSync(first);
    await assert.rejects(createSplit(nodeHost, first, MiB), isCode('EEXIST', files[1]));
    writeFileSync(first, 'x');
    const s = await createSplit(nodeHost, first, MiB, { force: true });
    await s.write(Buffer.alloc(10, 1), 0);
    await s.close();
    assert.equal(statSync(first).size, 10);
    assert.equal(existsSync(files[1]), false);
    assert.equal(existsSync(files[2]), false);
  });

  it('refuses names without a number and absurd segment sizes', async () => {
    await assert.rejects(createSplit(nodeHost, join(dir, 'disk.img'), MiB), isCode('EINVAL', 'disk.img'));
    await assert.rejects(createSplit(nodeHost, join(dir, 'disk.001'), 100), isCode('EINVAL'));
  });
});

describe('split storage: seeded damage to sets', () => {
  it('trimmed, removed, grown or emptied segments: a whole read or a PlatterError, never anything else', async () => {
    let seed = 0x5eed;
    const rnd = (n: number): number => {
      seed = (seed * 1103515245 + 12345) & 0x7fffffff;
      return seed % n;
    };
    const seg = 64 * 1024;
    for (let round = 0; round < 40; round++) {
      const n = 2 + rnd(5);
      const name = `dmg${round}`;
      const files = Array.from({ length: n }, (_, i) =>
        join(dir, `${name}.${String(i + 1).padStart(3, '0')}`),
      );
      for (const f of files) writeFileSync(f, Buffer.alloc(seg, round));
      const victim = rnd(n);
      const what = rnd(4);
      if (what === 0) rmSync(files[victim]);
      else if (what === 1) truncateSync(files[victim], rnd(seg));
      else if (what === 2) truncateSync(files[victim], seg + rnd(seg));
      else writeFileSync(files[victim], '');
      let s: Awaited<ReturnType<typeof nodeHost.open>> | undefined;
      try {
        s = await nodeHost.open(files[0], { write: false });
      } catch (e) {
        assert.ok(e instanceof PlatterError, `round ${round}: ${String(e)}`);
        assert.ok(e.message.includes(name), `round ${round}: the message names a file: ${e.message}`);
        continue;
      }
      try {
        const size = await s.size();
        const expect = files.filter(existsSync).reduce((a, f) => a + statSync(f).size, 0);
        assert.equal(size, expect, `round ${round}`);
        const buf = Buffer.alloc(size);
        await s.read(buf, 0);
        assert.ok(buf.every((b) => b === (round & 0xff)));
      } finally {
        await s.close();
      }
    }
  });
});

describe('split storage: property test against a flat model', () => {
  it('random segment layouts and random parallel writes/reads/truncates match one buffer', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 4096 }),
        fc.array(fc.integer({ min: 1, max: 8192 }), { minLength: 1, maxLength: 4 }),
        fc.boolean(),
        fc.array(
          fc.oneof(
            fc.record({
              op: fc.constant('w'),
              off: fc.nat(40000),
              len: fc.integer({ min: 1, max: 6000 }),
              v: fc.nat(255),
            }),
            fc.record({ op: fc.constant('t'), size: fc.integer({ min: 1, max: 40000 }) }),
          ),
          { maxLength: 12 },
        ),
        async (segSize, initial, rollover, ops) => {
          // Existing segments: all but the last of size segSize (a well-formed set).
          const sizes = initial.map((n, i) => (i < initial.length - 1 ? segSize : Math.min(n, segSize)));
          const segs = sizes.map((n, i) => memoryStorage(`m${i}`, new Uint8Array(n).fill(i + 1)));
          let model = Buffer.concat(segs.map((m) => Buffer.from(m.bytes())));
          const byName = new Map(segs.map((m) => [m.name, m]));
          const s = await splitStorage('prop', segs, {
            segmentSize: rollover ? segSize : undefined,
            createSegment: rollover
              ? async (n) => {
                  const m = memoryStorage(`m${n}`);
                  byName.set(m.name, m);
                  return m;
                }
              : undefined,
            removeSegment: async (name) => {
              byName.delete(name);
            },
          });
          for (const o of ops) {
            if (o.op === 'w') {
              // Two halves in parallel, as the copy engine does.
              const data = Buffer.alloc(o.len, o.v);
              const half = Math.floor(o.len / 2);
              await Promise.all([
                s.write(data.subarray(0, half), o.off),
                s.write(data.subarray(half), o.off + half),
              ]);
              if (o.off + o.len > model.length)
                model = Buffer.concat([model, Buffer.alloc(o.off + o.len - model.length)]);
              data.copy(model, o.off);
            } else {
              await s.truncate(o.size);
              model =
                o.size <= model.length
                  ? model.subarray(0, o.size)
                  : Buffer.concat([model, Buffer.alloc(o.size - model.length)]);
            }
            assert.equal(await s.size(), model.length);
          }
          const got = Buffer.alloc(model.length);
          await s.read(got, 0);
          assert.ok(got.equals(model));
          // A well-formed set stays well formed: every segment but the last is
          // full, and no empty segment is left behind the first.
          const files = s.files!;
          for (const f of files.slice(0, -1)) assert.equal(byName.get(f)!.bytes().length, segSize, f);
          if (files.length > 1) assert.ok(byName.get(files[files.length - 1])!.bytes().length > 0);
        },
      ),
      { numRuns: 150, seed: 0x51de },
    );
  });
});

describe('split storage over memory segments', () => {
  it('concatenates, grows only the last segment, and reports all data without extents', async () => {
    const a = memoryStorage('a', new Uint8Array(100).fill(1));
    const b = memoryStorage('b', new Uint8Array(50).fill(2));
    const s = await splitStorage('ab', [a, b]);
    assert.equal(await s.size(), 150);
    await s.write(new Uint8Array(20).fill(9), 90);
    await s.write(new Uint8Array(10).fill(7), 160);
    assert.equal(await s.size(), 170);
    assert.equal(a.bytes().length, 100, 'a middle segment never grows');
    assert.equal(b.bytes().length, 70);
    const got = new Uint8Array(170);
    await s.read(got, 0);
    assert.deepEqual([got[89], got[90], got[109], got[110], got[150], got[160]], [1, 9, 9, 2, 0, 7]);
    assert.deepEqual(s.files, ['a', 'b']);
    assert.equal(s.extents, undefined);
    await s.close();
    await assert.rejects(s.read(new Uint8Array(1), 0), isCode('ECLOSED'));
  });
});
