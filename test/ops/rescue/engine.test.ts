import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { stack } from '../../../src/core/chain.js';
import { type Disk, toDisk } from '../../../src/core/disk.js';
import { PlatterError } from '../../../src/core/errors.js';
import { zeroDisk } from '../../../src/core/zeros.js';
import { type RescueOptions, type RescueSyncIo, rescue } from '../../../src/ops/rescue/engine.js';
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

  it('two saves never overlap, even when the sector workers of scraping tick together', async () => {
    const size = 1 << 20;
    const data = randomBytes(size);
    const bad: Array<[number, number]> = [[0x20000, 0x8000]];
    let active = 0;
    let most = 0;
    let saves = 0;
    const map = RescueMap.fresh(0, size);
    await rescue(
      faultyStorage(data, bad),
      memDisk(size),
      map,
      base({
        saveIntervalMs: 0,
        saveMap: async () => {
          active++;
          most = Math.max(most, active);
          saves++;
          await new Promise((r) => setTimeout(r, 1));
          active--;
        },
      }),
    );
    assert.deepEqual(map.blocks, truth(size, bad).blocks);
    assert.ok(saves > 10, `saves ${saves}`);
    assert.equal(most, 1, 'one save at a time');
  });
});

/**
 * The synchronous path (`io`) over the same bytes and bad ranges as a
 * faultyStorage: it must make the same reads in the same order and end with the
 * same map and bytes as the promise path.
 */
function syncPair(data: Uint8Array, bad: Array<[number, number]>, dstSize = data.length, runs = false) {
  const log: string[] = [];
  const src = faultyStorage(data, bad);
  const read = src.read.bind(src);
  src.read = async (b, o) => {
    log.push(`${o}+${b.length}`);
    return read(b, o);
  };
  const dst = memDisk(dstSize);
  const ioLog: string[] = [];
  const ioDst = new Uint8Array(dstSize);
  let flushes = 0;
  const io: RescueSyncIo & { reads: number; badReads: number; runs: number; flushes(): number } = {
    reads: 0,
    badReads: 0,
    runs: 0,
    read(b, o) {
      io.reads++;
      ioLog.push(`${o}+${b.length}`);
      const end = o + b.length;
      if (end > data.length) throw new PlatterError('EIO', 'sync: read past end');
      if (bad.some(([a, len]) => o < a + len && a < end)) {
        io.badReads++;
        throw new PlatterError('EIO', `sync: input/output error at ${o}`);
      }
      b.set(data.subarray(o, end));
    },
    write(b, o) {
      ioDst.set(b, o);
    },
    size: () => data.length,
    buffer: (n) => new Uint8Array(n),
    flush: async () => void flushes++,
    flushes: () => flushes,
  };
  if (runs) {
    // The native contract in JavaScript, through io.read and io.write: reads in order, good
    // ones written at once, a stop after a bad one when asked, and after every 7 reads (a
    // time budget) so the engine must go on from where a run stopped.
    io.readSectors = (from, to, unit, opts) => {
      io.runs++;
      const bad: number[] = [];
      let good = 0;
      let pos = opts.forward ? from : to;
      for (let n = 1; opts.forward ? pos < to : pos > from; n++) {
        const at = opts.forward ? pos : pos - unit;
        pos = opts.forward ? at + unit : at;
        const b = new Uint8Array(unit);
        let ok = true;
        try {
          io.read(b, at);
        } catch {
          ok = false;
        }
        if (ok) {
          good += unit;
          if (!(opts.sparse && b.every((x) => x === 0))) io.write(b, at + opts.dstDelta);
        } else {
          bad.push(at);
          if (opts.stopOnError) break;
        }
        if (n % 7 === 0) break;
      }
      return { reached: pos, good, bad };
    };
  }
  // The promise path must not be used when io is given.
  const unused = faultyStorage(new Uint8Array(data.length), [[0, data.length]], 'unused');
  return { src, dst, log, io, ioLog, ioDst, unused };
}

describe('rescue engine: the synchronous path', () => {
  const layouts: Array<[string, number, Array<[number, number]>, Partial<RescueOptions>]> = [
    ['healthy', 3 << 20, [], {}],
    [
      'bad sectors in clusters',
      8 << 20,
      [
        [0, 512],
        [0x100000, 0x1000],
        [0x301000, 0x400],
        [0x400200, 0x200],
        [0x5ff000, 0x21000],
        [(8 << 20) - 512, 512],
      ],
      {},
    ],
    [
      '-R',
      4 << 20,
      [
        [0x100000, 0x3000],
        [0x200200, 0x200],
      ],
      { reverse: true },
    ],
    [
      '-r 2 -c 8',
      1 << 20,
      [
        [0x8000, 1024],
        [0x9000, 0x4000],
      ],
      { retryPasses: 2, clusterSectors: 8 },
    ],
    ['-i/-o and a partial last sector', 10000, [[5000, 10]], { inputPos: 1000, outputPos: 5000 }],
  ];
  for (const [name, size, bad, over] of layouts.flatMap((l) => [
    l,
    [`${l[0]}, in runs`, ...l.slice(1)] as typeof l,
  ])) {
    it(`${name}: the same reads, map and bytes as the promise path`, async () => {
      const data = randomBytes(size);
      const p = syncPair(data, bad, size + 10000, name.endsWith('in runs'));
      const start = over.inputPos ?? 0;
      const m1 = RescueMap.fresh(start, size - start);
      const m2 = RescueMap.fresh(start, size - start);
      const r1 = await rescue(p.src, p.dst, m1, base(over));
      const r2 = await rescue(p.unused, p.dst, m2, base({ ...over, io: p.io }));
      assert.equal(p.unused.reads, 0, 'the promise path was not used');
      if (name.endsWith('in runs')) assert.ok(p.io.runs > 0, 'reads were made in runs');
      // The same reads; in the same order up to scraping (the promise path overlaps
      // up to 8 sector reads there, the synchronous one reads them in order, like ddrescue).
      assert.deepEqual([...p.ioLog].sort(), [...p.log].sort(), 'the same reads');
      const scrapeAt = (log: string[]) => {
        const i = log.findIndex((r, k) => r.endsWith('+512') && log[k + 1]?.endsWith('+512'));
        return i < 0 ? log.length : i;
      };
      assert.deepEqual(p.ioLog.slice(0, scrapeAt(p.log)), p.log.slice(0, scrapeAt(p.log)));
      assert.deepEqual(m2.blocks, m1.blocks);
      assert.equal(p.io.badReads, p.src.badReads);
      assert.deepEqual(
        { ...r2, elapsedMs: 0, sinceLastGoodMs: 0 },
        { ...r1, elapsedMs: 0, sinceLastGoodMs: 0 },
      );
      assert.ok(Buffer.from(p.ioDst).equals(Buffer.from(p.dst.bytes)), 'same destination bytes');
      assert.ok(p.io.flushes() >= 2, 'io.flush before the saves');
    });
  }

  it('-y: every write is flushed before the next read, on both paths', async () => {
    const data = randomBytes(1 << 20);
    const bad: Array<[number, number]> = [[0x40000, 0x1000]];
    const p = syncPair(data, bad);
    // Synchronous path: a flush follows every write (and precedes every save).
    const events: string[] = [];
    const write = p.io.write;
    p.io.write = (b, o) => {
      events.push('write');
      write(b, o);
    };
    const flush = p.io.flush;
    p.io.flush = async () => {
      events.push('flush');
      await flush();
    };
    await rescue(p.unused, p.dst, RescueMap.fresh(0, data.length), base({ synchronous: true, io: p.io }));
    const writes = events.filter((e) => e === 'write').length;
    assert.ok(writes > 1);
    events.forEach((e, i) => {
      if (e === 'write') assert.equal(events[i + 1], 'flush', `write ${i} is followed by a flush`);
    });
    const rescued = new Uint8Array(data);
    rescued.fill(0, 0x40000, 0x41000);
    assert.ok(Buffer.from(p.ioDst.subarray(0, data.length)).equals(Buffer.from(rescued)));
    // Promise path: the same, and nothing is in flight when the next read starts.
    const q = syncPair(data, bad);
    const order: string[] = [];
    let inFlight = 0;
    const dWrite = q.dst.write.bind(q.dst);
    q.dst.write = async (b, o) => {
      inFlight++;
      order.push('write');
      await dWrite(b, o);
      inFlight--;
    };
    const dFlush = q.dst.flush.bind(q.dst);
    q.dst.flush = async () => {
      order.push('flush');
      await dFlush();
    };
    const read = q.src.read.bind(q.src);
    q.src.read = async (b, o) => {
      assert.equal(inFlight, 0, 'no write in flight during a read');
      order.push('read');
      return read(b, o);
    };
    await rescue(q.src, q.dst, RescueMap.fresh(0, data.length), base({ synchronous: true }));
    order.forEach((e, i) => {
      if (e === 'write') assert.equal(order[i + 1], 'flush', `write ${i} is followed by a flush`);
    });
    assert.ok(Buffer.from(q.dst.bytes.subarray(0, data.length)).equals(Buffer.from(rescued)));
  });

  it('-S: all-zero clusters are not written', async () => {
    const data = new Uint8Array(1 << 20);
    data.fill(7, 0x10000, 0x20000);
    const p = syncPair(data, []);
    const writes: number[] = [];
    const write = p.io.write;
    p.io.write = (b, o) => {
      writes.push(o);
      write(b, o);
    };
    await rescue(p.unused, p.dst, RescueMap.fresh(0, data.length), base({ sparse: true, io: p.io }));
    assert.deepEqual(writes, [0x10000]);
    assert.ok(Buffer.from(p.ioDst).equals(Buffer.from(data)));
  });

  it('a failing write stops the run with that error, the map saved up to it and not past it', async () => {
    const data = randomBytes(1 << 20);
    const p = syncPair(data, []);
    let n = 0;
    p.io.write = () => {
      if (++n === 3) throw new PlatterError('ENOSPC', 'dst: no space left on device');
    };
    const saved: RescueMap[] = [];
    const map = RescueMap.fresh(0, data.length);
    await assert.rejects(
      rescue(
        p.unused,
        p.dst,
        map,
        base({ io: p.io, saveMap: async (m) => void saved.push(new RescueMap(structuredClone(m.blocks))) }),
      ),
      /^PlatterError: dst: no space left on device; mapfile saved$/,
    );
    assert.equal(saved.length, 2, 'the initial save, and the one after the failure');
    assert.deepEqual(saved[1].blocks, [
      { pos: 0, size: 2 * 65536, status: '+' },
      { pos: 2 * 65536, size: data.length - 2 * 65536, status: '?' },
    ]);
  });

  it('a failing write behind the reads: the map saved with that read not rescued, however late it fails', async () => {
    const data = randomBytes(1 << 20);
    const src = faultyStorage(data, []);
    const dst = memDisk(data.length);
    // The third write fails, after two later reads were already marked rescued.
    let n = 0;
    const failing: Disk = {
      ...dst,
      write: async (b, at) => {
        if (++n === 3) {
          await new Promise((r) => setTimeout(r, 20));
          throw new PlatterError('ENOSPC', 'dst: no space left on device');
        }
        return dst.write(b, at);
      },
    };
    const saved: RescueMap[] = [];
    await assert.rejects(
      rescue(
        src,
        failing,
        RescueMap.fresh(0, data.length),
        base({ saveMap: async (m) => void saved.push(new RescueMap(structuredClone(m.blocks))) }),
      ),
      /no space left on device; mapfile saved$/,
    );
    const last = saved[saved.length - 1];
    assert.equal(last.statusAt(2 * 65536), '?', 'the cluster whose write failed is not rescued');
    assert.equal(last.statusAt(0), '+');
    // Whatever the map calls rescued is on the destination.
    for (const b of last.blocks.filter((x) => x.status === '+'))
      assert.ok(
        Buffer.from(dst.bytes.subarray(b.pos, b.pos + b.size)).equals(data.subarray(b.pos, b.pos + b.size)),
      );
  });

  it('a source that shrinks is seen through io.size', async () => {
    const data = randomBytes(1 << 20);
    const p = syncPair(data, []);
    let n = 0;
    const read = p.io.read;
    p.io.read = (b, o) => {
      if (++n > 3) throw new PlatterError('EIO', 'sync: input/output error');
      read(b, o);
    };
    p.io.size = () => (n > 3 ? 1000 : data.length);
    let saves = 0;
    await assert.rejects(
      rescue(
        p.unused,
        p.dst,
        RescueMap.fresh(0, data.length),
        base({ io: p.io, saveMap: async () => void saves++ }),
      ),
      /source shrank to 1000 bytes/,
    );
    assert.ok(saves >= 2, 'saved at the stop');
  });

  it('an error that is not a PlatterError propagates (our bug, not a bad sector)', async () => {
    const data = randomBytes(1 << 20);
    const p = syncPair(data, []);
    p.io.read = () => {
      throw new TypeError('boom');
    };
    await assert.rejects(
      rescue(p.unused, p.dst, RescueMap.fresh(0, data.length), base({ io: p.io })),
      /boom/,
    );
  });

  it('gives the event loop a turn: an abort from a timer stops a run whose reads never wait', async () => {
    const size = 64 << 20;
    const data = new Uint8Array(size);
    const p = syncPair(data, []);
    const read = p.io.read;
    p.io.read = (b, o) => {
      const until = performance.now() + 0.2;
      while (performance.now() < until); // a read that blocks the thread, like readSync
      read(b, o);
    };
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 30);
    let saved = '';
    const map = RescueMap.fresh(0, size);
    await assert.rejects(
      rescue(
        p.unused,
        p.dst,
        map,
        base({
          io: p.io,
          signal: ac.signal,
          saveMap: async (m) => {
            saved = JSON.stringify(m.blocks);
          },
        }),
      ),
      /interrupted/,
    );
    assert.equal(saved, JSON.stringify(map.blocks), 'map saved at the interruption');
    assert.ok(map.totals()['?'] > 0, 'stopped long before the end');
  });
});
