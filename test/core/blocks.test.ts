import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { blockPieces, eachBlockPiece } from '../../src/core/blocks.js';

describe('blockPieces', () => {
  it('cuts a range at block boundaries: contiguous, each inside one block, covering the range', () => {
    fc.assert(
      fc.property(
        fc.nat({ max: 1 << 30 }),
        fc.nat({ max: 1 << 22 }),
        fc.integer({ min: 1, max: 1 << 21 }),
        (offset, length, bs) => {
          let at = 0;
          for (const p of blockPieces(offset, length, bs)) {
            assert.equal(p.at, at, 'contiguous');
            assert.ok(p.length >= 1 && p.within + p.length <= bs, 'inside one block');
            assert.equal(p.block * bs + p.within, offset + p.at, 'block and within name the byte');
            at += p.length;
          }
          assert.equal(at, length, 'covers the range');
        },
      ),
    );
  });

  it('an empty range has no pieces; a range inside one block is one piece', () => {
    assert.deepEqual([...blockPieces(100, 0, 512)], []);
    assert.deepEqual([...blockPieces(1000, 24, 512)], [{ block: 1, within: 488, at: 0, length: 24 }]);
    assert.deepEqual(
      [...blockPieces(1000, 100, 512)],
      [
        { block: 1, within: 488, at: 0, length: 24 },
        { block: 2, within: 0, at: 24, length: 76 },
      ],
    );
  });

  it('eachBlockPiece hands out views of the buffer and waits for every piece', async () => {
    const buf = new Uint8Array(3000);
    const seen: number[] = [];
    await eachBlockPiece(buf, 700, 1024, async (piece, block, within) => {
      await new Promise((r) => setTimeout(r, 3 - block));
      piece.fill(block + 1);
      seen.push(block);
      assert.equal(piece.buffer, buf.buffer, 'a view, not a copy');
      assert.ok(within + piece.length <= 1024);
    });
    assert.deepEqual(seen.sort(), [0, 1, 2, 3]);
    assert.equal(buf[0], 1);
    assert.equal(buf[323], 1);
    assert.equal(buf[324], 2);
    assert.equal(buf[2999], 4);
  });
});
