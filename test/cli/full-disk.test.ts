/**
 * A destination file system that fills up: one error line, and then
 * - convert: no DST.partial left, and every block given back;
 * - rescue: the mapfile saved up to what the destination holds (ddrescue's way);
 * - acquire: the evidence file left as it is, said to be incomplete.
 * On ext4 the copy reserves blocks before large writes (native/platter.c
 * reserve_blocks), so this is also what happens when that reservation is
 * refused. Needs root (mount) and mkfs.ext4; skipped elsewhere, required under CI.
 */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import {
  mkdirSync,
  readdirSync,
  readFileSync,
  rmSync,
  statfsSync,
  truncateSync,
  writeFileSync,
} from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, it } from 'node:test';
import { parseMapfile } from '../../src/ops/rescue/mapfile.js';
import { run } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';
import { oneErrorLine, platterIn } from './cli.js';

let mounted = false;
let why = '';
// Unmounted before tempDir's own cleanup removes the directory (hooks run in order).
after(() => {
  if (mounted) run('umount', [mnt]);
});
const dir = tempDir();
const MiB = 1 << 20;
const image = join(dir, 'small.ext4');
const mnt = join(dir, 'mnt');

before(() => {
  if (process.getuid?.() !== 0) {
    why = 'not root: cannot mount a file system';
    return;
  }
  writeFileSync(image, '');
  truncateSync(image, 16 * MiB);
  const mkfs = run('mkfs.ext4', ['-q', '-F', image]);
  if (mkfs.status !== 0) {
    why = `mkfs.ext4 failed: ${mkfs.stderr.trim()}`;
    return;
  }
  mkdirSync(mnt);
  const m = run('mount', ['-o', 'loop', image, mnt]);
  if (m.status !== 0) why = `mount -o loop failed: ${m.stderr.trim()}`;
  else mounted = true;
});

function needMount(t: { skip(msg: string): void }): boolean {
  if (mounted) return true;
  if (process.env.CI) assert.fail(`a loop-mounted ext4 is needed under CI: ${why}`);
  t.skip(why);
  return false;
}

describe('convert onto a file system that fills up', () => {
  const src = join(dir, 'src.raw');
  before(() => writeFileSync(src, randomBytes(24 * MiB)));

  for (const format of ['raw', 'qcow2']) {
    it(`-O ${format}: one error line naming ENOSPC, no DST.partial, the space given back`, (t) => {
      if (!needMount(t)) return;
      const free = statfsSync(mnt).bfree;
      const dst = join(mnt, `out.${format}`);
      const r = platterIn(dir, ['convert', '-O', format, src, dst]);
      const line = oneErrorLine(r);
      assert.match(line, /^\S*out\.\w+: no space left on device \(write at offset \d+\)/);
      assert.deepEqual(readdirSync(mnt).sort(), ['lost+found']);
      assert.equal(statfsSync(mnt).bfree, free, 'every block the copy took is free again');
    });
  }

  it('rescue: stops with ENOSPC and the mapfile saved, rescued up to where the destination holds data', (t) => {
    if (!needMount(t)) return;
    const dst = join(mnt, 'rescued.img');
    const mapfile = join(dir, 'rescued.map');
    const r = platterIn(dir, ['rescue', '-q', src, dst, mapfile]);
    assert.match(oneErrorLine(r), /rescued\.img: no space left on device .*; mapfile saved$/);
    const map = parseMapfile(readFileSync(mapfile, 'utf8'), mapfile);
    const rescued = map.blocks.filter((b) => b.status === '+');
    assert.equal(rescued.length, 1, 'one rescued area, from the start');
    assert.equal(rescued[0].pos, 0);
    assert.ok(rescued[0].size >= 4 * MiB && rescued[0].size < 16 * MiB, `rescued ${rescued[0].size} bytes`);
    assert.equal(map.totals()['?'], 24 * MiB - rescued[0].size, 'the rest is left to do');
    const out = readFileSync(dst).subarray(0, rescued[0].size);
    assert.ok(
      out.equals(readFileSync(src).subarray(0, rescued[0].size)),
      'what the map calls rescued is there',
    );
    rmSync(dst);
  });

  it('acquire: stops with ENOSPC, says the evidence file is incomplete, and leaves it (no log)', (t) => {
    if (!needMount(t)) return;
    const dst = join(mnt, 'evidence.raw');
    const r = platterIn(dir, ['acquire', '-q', src, dst]);
    assert.match(
      oneErrorLine(r),
      /evidence\.raw: no space left on device \(write at offset \d+\); .*evidence\.raw is incomplete \(no log was written\)$/,
    );
    assert.deepEqual(readdirSync(mnt).sort(), ['evidence.raw', 'lost+found']);
    rmSync(dst);
  });
});
