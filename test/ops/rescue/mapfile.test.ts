import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { PlatterError } from '../../../src/core/errors.js';
import { type BlockStatus, formatMapfile, parseMapfile, RescueMap } from '../../../src/ops/rescue/mapfile.js';

const DDRESCUE_MAP = `# Mapfile. Created by GNU ddrescue version 1.27
# Command line: ddrescue -n -H truth.map src.img out2.img map2.txt
# Start time:   2026-11-25 09:53:14
# Current time: 2026-11-25 09:53:14
# Finished
# current_pos  current_status  current_pass
0x00301400     +               1
#      pos        size  status
0x00000000  0x00100000  +
0x00100000  0x00000200  -
0x00100200  0x00000C00  /
0x00100E00  0x00000200  -
0x00101000  0x00200000  +
0x00301000  0x00000400  -
0x00301400  0x000FEC00  +
`;

describe('mapfile', () => {
  it('parses a GNU ddrescue mapfile and writes the same block lines back', () => {
    const map = parseMapfile(DDRESCUE_MAP, 'm');
    assert.equal(map.currentPos, 0x301400);
    assert.equal(map.currentStatus, '+');
    assert.equal(map.blocks.length, 7);
    assert.deepEqual(map.blocks[2], { pos: 0x100200, size: 0xc00, status: '/' });
    const out = formatMapfile(map, { finished: true });
    const blockLines = (t: string) => t.split('\n').filter((l) => /^0x[0-9A-F]+\s+0x/.test(l));
    assert.deepEqual(blockLines(out), blockLines(DDRESCUE_MAP));
    assert.match(out, /^0x00301400 {5}\+ {15}1$/m);
  });

  it('accepts old two-field status lines and decimal numbers', () => {
    const map = parseMapfile('0 ?\n0 1024 +\n1024 512 -\n', 'm');
    assert.equal(map.currentPass, 1);
    assert.equal(map.end, 1536);
  });

  for (const [what, text] of [
    ['overlapping blocks', '0x0 ?\n0x0 0x400 +\n0x200 0x400 -\n'],
    ['a bad status character', '0x0 ?\n0x0 0x400 X\n'],
    ['a zero-size block', '0x0 ?\n0x0 0x0 +\n'],
    ['no status line', '# nothing\n'],
    ['garbage numbers', '0x0 ?\n0xZZ 0x400 +\n'],
    ['a missing field', '0x0 ?\n0x0 +\n'],
  ]) {
    it(`rejects ${what} with one clear error`, () => {
      assert.throws(
        () => parseMapfile(text, 'bad.map'),
        (e: unknown) => e instanceof PlatterError && e.code === 'EINVAL' && e.message.startsWith('bad.map:'),
      );
    });
  }

  it('set() keeps the map equal to a byte model, sorted and merged (property)', () => {
    const statuses: BlockStatus[] = ['?', '*', '/', '-', '+'];
    fc.assert(
      fc.property(
        fc.array(fc.tuple(fc.nat(300), fc.integer({ min: 1, max: 120 }), fc.constantFrom(...statuses)), {
          maxLength: 40,
        }),
        (ops) => {
          const size = 256;
          const map = RescueMap.fresh(0, size);
          const model: BlockStatus[] = new Array(size).fill('?');
          for (const [pos, len, st] of ops) {
            map.set(pos, len, st);
            for (let i = pos; i < Math.min(size, pos + len); i++) model[i] = st;
          }
          let at = 0;
          for (let k = 0; k < map.blocks.length; k++) {
            const b = map.blocks[k];
            assert.equal(b.pos, at);
            if (k > 0) assert.notEqual(map.blocks[k - 1].status, b.status, 'neighbours are merged');
            for (let i = b.pos; i < b.pos + b.size; i++) assert.equal(model[i], b.status);
            at += b.size;
          }
          assert.equal(at, size);
          const again = parseMapfile(formatMapfile(map), 'r');
          assert.deepEqual(again.blocks, map.blocks);
        },
      ),
    );
  });
});
