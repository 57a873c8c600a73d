import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { stack } from '../../../src/core/chain.js';
import { type Disk, toDisk } from '../../../src/core/disk.js';
import { zeroDisk } from '../../../src/core/zeros.js';
import { type RescueOptions, rescue } from '../../../src/ops/rescue/engine.js';
import { RescueMap } from '../../../src/ops/rescue/mapfile.js';
import { faultyStorage } from '../../helpers/faulty.js';

function memDisk(size: number): Disk & { bytes: Uint8Array } {
  const bytes = new Uint8Array(size);
  const d = toDisk(
    {
      size,
      async read(buf, off) {
        buf.set(bytes.subarray(off, off + buf.length));
      },
      async write(buf, off) {
        bytes.set(buf, off);
      },
    },
    { name: 'dst', readOnly: false },
  );
  return Object.assign(stack(d, zeroDisk(size)), { bytes });
}

const base = (over: Partial<RescueOptions> = {}): RescueOptions => ({
  sectorSize: 512,
  clusterSectors: 128,
  inputPos: 0,
  outputPos: 0,
  reverse: false,
  noTrim: false,
  noScrape: false,
  retryPasses: 0,
  skipInitial: 64 * 1024,
  skipMax: 1 << 20,
  sparse: false,
  saveMap: async () => undefined,
  ...over,
});

/** The expected final map after a complete run: bad sectors exactly. */
function truth(size: number, bad: Array<[number, number]>, ss = 512): RescueMap {
  const m = new RescueMap([{ pos: 0, size, status: '+' }]);
  for (const [a, len] of bad) {
    const from = Math.floor(a / ss) * ss;
    const to = Math.min(size, Math.ceil((a + len) / ss) * ss);
    m.set(from, to - from, '-');
  }
  return m;
}

describe('rescue engine', () => {
  it('a healthy source is copied whole in one pass', async () => {
    const data = randomBytes(3 << 20);
    const src = faultyStorage(data, []);
    const dst = memDisk(data.length);
    const map = RescueMap.fresh(0, data.length);
    const r = await rescue(src, dst, map, base());
    assert.equal(r.finished, true);
    assert.deepEqual(map.blocks, [{ pos: 0, size: data.length, status: '+' }]);
    assert.ok(Buffer.from(dst.bytes).equals(data));
    assert.equal(src.badReads, 0);
    assert.equal(src.reads, (3 << 20) / (64 * 1024));
  });

  for (const reverse of [false, true]) {
    it(`bad sectors end exactly as bad (-) and all else is rescued${reverse ? ' (-R)' : ''}`, async () => {
      const size = 8 << 20;
      const data = randomBytes(size);
      const bad: Array<[number, number]> = [
        [0x100000, 0x1000],
        [0x301000, 0x400],
        [0x400200, 0x200],
        [size - 512, 512],
        [0, 512],
      ];
      const src = faultyStorage(data, bad);
      const dst = memDisk(size);
      const map = RescueMap.fresh(0, size);
      const saves: boolean[] = [];
      const r = await rescue(
        src,
        dst,
        map,
        base({ reverse, saveMap: async (_m, fin) => void saves.push(fin) }),
      );
      assert.deepEqual(map.blocks, truth(size, bad).blocks);
      assert.equal(r.badSize, 0x1000 + 0x400 + 0x200 + 512 + 512);
      assert.equal(saves.at(-1), true, 'the last save is marked finished');
      const expect = Buffer.from(data);
      for (const [a, len] of bad) expect.fill(0, a, a + len);
      assert.ok(Buffer.from(dst.bytes).equals(expect), 'good data equals the source; bad sectors are zeros');
      // Each bad sector is read at most twice (cluster or trim edge, then trim/scrape): never more.
      assert.ok(src.badReads <= 2 * (r.badSize / 512) + bad.length * 2, `bad reads ${src.badReads}`);
    });
  }

  it('-n leaves non-scraped areas, a later run scrapes them', async () => {
    const size = 1 << 20;
    const data = randomBytes(size);
    const bad: Array<[number, number]> = [
      [0x20000, 512],
      [0x20e00, 512],
    ];
    const map = RescueMap.fresh(0, size);
    const dst = memDisk(size);
    const r1 = await rescue(faultyStorage(data, bad), dst, map, base({ noScrape: true }));
    assert.equal(r1.finished, true, 'finished what -n asked for, as ddrescue says');
    assert.ok(map.find('/').length > 0, 'non-scraped area between the trimmed edges');
    const r2 = await rescue(faultyStorage(data, bad), dst, map, base());
    assert.equal(r2.finished, true);
    assert.deepEqual(map.blocks, truth(size, bad).blocks);
  });

  it('-r retries bad sectors and rescues those that read now', async () => {
    const size = 1 << 20;
    const data = randomBytes(size);
    const src = faultyStorage(data, [[0x8000, 1024]]);
    const map = RescueMap.fresh(0, size);
    const dst = memDisk(size);
    await rescue(src, dst, map, base());
    assert.equal(map.totals()['-'], 1024);
    src.bad = []; // the drive recovers
    await rescue(src, dst, map, base({ retryPasses: 1 }));
    assert.deepEqual(map.blocks, [{ pos: 0, size, status: '+' }]);
    assert.ok(Buffer.from(dst.bytes).equals(data));
  });

  it('input and output positions and a partial last sector', async () => {
    const data = randomBytes(10000);
    const dst = memDisk(20000);
    const map = RescueMap.fresh(1000, 9000);
    await rescue(faultyStorage(data, [[5000, 10]]), dst, map, base({ inputPos: 1000, outputPos: 5000 }));
    assert.equal(map.start, 1000);
    assert.equal(map.end, 10000);
    assert.deepEqual(map.find('-'), [{ pos: 4608, size: 512, status: '-' }]);
    assert.ok(Buffer.from(dst.bytes.subarray(5000, 5000 + 3608)).equals(data.subarray(1000, 4608)));
    assert.ok(
      Buffer.from(dst.bytes.subarray(5000 + 9000 - 392, 14000)).equals(data.subarray(10000 - 392, 10000)),
    );
  });

  it('stops cleanly with the map saved when aborted, and resumes to the same result', async () => {
    const size = 4 << 20;
    const data = randomBytes(size);
    const bad: Array<[number, number]> = [[0x200000, 4096]];
    const ac = new AbortController();
    const map = RescueMap.fresh(0, size);
    const dst = memDisk(size);
    let saved = '';
    let reads = 0;
    const src = faultyStorage(data, bad);
    const read = src.read.bind(src);
    src.read = async (b, o) => {
      if (++reads === 20) ac.abort();
      return read(b, o);
    };
    await assert.rejects(
      rescue(
        src,
        dst,
        map,
        base({
          signal: ac.signal,
          saveMap: async (m) => {
            saved = JSON.stringify(m.blocks);
          },
        }),
      ),
      /interrupted/,
    );
    assert.equal(saved, JSON.stringify(map.blocks), 'map saved at the interruption');
    assert.ok(map.totals()['?'] > 0);
    await rescue(faultyStorage(data, bad), dst, map, base());
    assert.deepEqual(map.blocks, truth(size, bad).blocks);
  });

  it('a source that shrinks mid-run stops with the map saved', async () => {
    const data = randomBytes(1 << 20);
    const src = faultyStorage(data, []);
    let n = 0;
    src.read = async (b, o) => {
      n++;
      if (n > 3) {
        src.size = async () => 1000;
        throw new Error('unreachable');
      }
      b.set(data.subarray(o, o + b.length));
    };
    // Non-PlatterError from a store is our bug and propagates; a PlatterError EIO plus a smaller size stops cleanly.
    const src2 = faultyStorage(data, []);
    let m = 0;
    const real = src2.read.bind(src2);
    src2.read = async (b, o) => {
      if (++m > 3) {
        src2.size = async () => 1000;
        src2.bad = [[0, data.length]];
      }
      return real(b, o);
    };
    let saves = 0;
    const map = RescueMap.fresh(0, data.length);
    await assert.rejects(
      rescue(src2, memDisk(data.length), map, base({ saveMap: async () => void saves++ })),
      /source shrank to 1000 bytes/,
    );
    assert.ok(saves >= 1);
    assert.equal(map.totals()['+'], 3 * 65536);
    await assert.rejects(
      rescue(src, memDisk(data.length), RescueMap.fresh(0, data.length), base()),
      /unreachable/,
    );
  });
});
