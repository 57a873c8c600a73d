/** platter rescue options on an in-process faulty-free source (the failing-drive tests are in test/interop/ddrescue). */
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { describe, it } from 'node:test';
import { parseMapfile } from '../../src/ops/rescue/mapfile.js';
import { platter } from '../helpers/peers.js';
import { tempDir } from '../helpers/tmp.js';

describe('rescue options', () => {
  const dir = tempDir();
  const src = join(dir, 'src.img');
  const data = randomBytes(1 << 20);
  writeFileSync(src, data);

  it('-i/-s/-o copy a window to another place and the map covers only the domain', () => {
    const r = platter([
      'rescue',
      '-q',
      '-i',
      '0x10000',
      '-s',
      '64K',
      '-o',
      '0',
      src,
      join(dir, 'w.img'),
      join(dir, 'w.map'),
    ]);
    assert.equal(r.status, 0, r.stderr);
    const out = readFileSync(join(dir, 'w.img'));
    assert.equal(out.length, 65536);
    assert.ok(out.equals(data.subarray(0x10000, 0x20000)));
    const map = parseMapfile(readFileSync(join(dir, 'w.map'), 'utf8'), 'w.map');
    assert.deepEqual(map.blocks, [{ pos: 0x10000, size: 0x10000, status: '+' }]);
  });

  it('-m restricts the rescue to the finished blocks of a domain mapfile', () => {
    writeFileSync(
      join(dir, 'dom.map'),
      '0x0 +\n0x0 0x1000 +\n0x1000 0xF000 ?\n0x10000 0x1000 +\n0x11000 0xEF000 ?\n',
    );
    const r = platter([
      'rescue',
      '-q',
      '-m',
      join(dir, 'dom.map'),
      src,
      join(dir, 'm.img'),
      join(dir, 'm.map'),
    ]);
    assert.equal(r.status, 0, r.stderr);
    const out = readFileSync(join(dir, 'm.img'));
    assert.ok(out.subarray(0, 0x1000).equals(data.subarray(0, 0x1000)));
    assert.ok(
      out.subarray(0x1000, 0x10000).every((b) => b === 0),
      'outside the domain nothing is read',
    );
    assert.ok(out.subarray(0x10000, 0x11000).equals(data.subarray(0x10000, 0x11000)));
    const map = parseMapfile(readFileSync(join(dir, 'm.map'), 'utf8'), 'm.map');
    assert.equal(map.totals()['+'], 0x2000);
  });

  it('-S keeps zeros sparse, --json reports the summary', () => {
    const z = join(dir, 'zeros.img');
    const zeros = Buffer.alloc(4 << 20);
    zeros.fill(7, 1 << 20, (1 << 20) + 4096);
    writeFileSync(z, zeros);
    const r = platter(['rescue', '-S', '--json', z, join(dir, 's.img'), join(dir, 's.map')]);
    assert.equal(r.status, 0, r.stderr);
    const j = JSON.parse(r.stdout);
    assert.equal(j.rescued, 4 << 20);
    assert.equal(j.badSize, 0);
    assert.equal(j.finished, true);
    assert.ok(readFileSync(join(dir, 's.img')).equals(zeros));
  });

  it('-p in a pipe prints status lines, --map-png draws the map', () => {
    const r = platter([
      'rescue',
      '-p',
      '--map-png',
      join(dir, 'p.png'),
      src,
      join(dir, 'p.img'),
      join(dir, 'p.map'),
    ]);
    assert.equal(r.status, 0, r.stderr);
    assert.match(r.stderr, /rescued: +1 MiB/);
    assert.match(r.stderr, /pct rescued: 100\.00%/);
    assert.equal(readFileSync(join(dir, 'p.png')).subarray(1, 4).toString(), 'PNG');
  });

  it('bad option values are one error line', () => {
    for (const args of [
      ['-b', '0'],
      ['-c', 'x'],
      ['-r', '-5'],
      ['-T', 'soon'],
    ]) {
      const r = platter(['rescue', ...args, src, join(dir, 'x.img'), join(dir, 'x.map')]);
      assert.equal(r.status, 1, args.join(' '));
      assert.match(r.stderr, /^platter: error: [^\n]+\n$/);
    }
  });

  it('an empty mapfile (touch) starts a new rescue, as with GNU ddrescue', () => {
    const out = join(dir, 'e.img');
    const map = join(dir, 'e.map');
    writeFileSync(map, '');
    const r = platter(['rescue', '-q', src, out, map]);
    assert.equal(r.status, 0, r.stderr);
    assert.ok(readFileSync(out).equals(data));
    assert.deepEqual(
      parseMapfile(readFileSync(map, 'utf8'), map).blocks.map((b) => b.status),
      ['+'],
    );
  });

  it('the mapfile, the source and the destination must be three files: refused before anything is written', () => {
    const y = join(dir, 'y.img');
    for (const [args, what] of [
      [[src, y, y], 'the destination and the mapfile'],
      [[src, y, src], 'the source and the mapfile'],
      [[src, src, y], 'the source and the destination'],
    ] as const) {
      const r = platter(['rescue', ...args]);
      assert.equal(r.status, 1);
      assert.match(r.stderr, new RegExp(`^platter: error: [^\n]*: ${what} are the same file\n$`));
      assert.ok(!existsSync(y), 'nothing written');
    }
    assert.ok(readFileSync(src).equals(data), 'the source untouched');
  });
});
