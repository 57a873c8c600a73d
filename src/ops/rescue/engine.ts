/**
 * The rescue engine: GNU ddrescue's phases over a RescueMap.
 *
 *   copying   pass 1 forward, skipping ahead after each error (skip size doubles
 *             on consecutive errors up to a maximum, halves after good reads);
 *             pass 2 backward, skipping; pass 3 forward, no skipping. A failed
 *             cluster becomes non-trimmed (*); skipped areas stay non-tried (?).
 *   trimming  each * block: sectors forward from its leading edge until one fails,
 *             then backward from its trailing edge until one fails; the failed
 *             sectors become bad (-), what lies between non-scraped (/).
 *   scraping  each / block, sector by sector: good (+) or bad (-).
 *   retrying  -r N passes over the bad (-) sectors, alternating direction.
 *
 * `-R` reverses every direction. The destination is flushed before each save of
 * the map, so the mapfile never claims data that is not on disk.
 *
 * I/O goes through `src` and `dst` (promises: each read and write is a hand-off
 * to libuv's thread pool), or, when the caller offers `io`, through its
 * synchronous calls on the same source and destination: a 64 KiB read from a
 * healthy source costs less than the hand-off, so the synchronous path is what
 * keeps up with GNU ddrescue. It makes exactly the same reads in the same order
 * (the read pattern never depends on the path) and gives the event loop a turn
 * every few milliseconds (SIGINT, timers) and at every check of the signal.
 */
import { isAllZero } from '../../core/bytes.js';
import type { Disk } from '../../core/disk.js';
import { PlatterError } from '../../core/errors.js';
import type { SectorRun, SectorRunOptions, Storage } from '../../core/storage.js';
import type { OpOptions } from '../progress.js';
import type { Block, BlockStatus, CurrentStatus, RescueMap } from './mapfile.js';

/**
 * Synchronous access to the rescue's source and destination (see the top of the
 * file). The CLI offers it for a local file or device rescued into a raw file.
 */
export interface RescueSyncIo {
  /** Like `src.read`: fills `buf` from source offset `pos`, or throws (a PlatterError for a read error). */
  read(buf: Uint8Array, pos: number): void;
  /** Like `dst.write` at destination offset `pos`. */
  write(buf: Uint8Array, pos: number): void;
  /** The source's size now (else `src.size()` is asked). */
  size?(): number;
  /** A buffer for reads of up to `size` bytes (page-aligned for direct I/O). */
  buffer(size: number): Uint8Array;
  /** Makes everything written durable (instead of `dst.flush()`). */
  flush(): Promise<void>;
  /**
   * Reads the whole sectors of [from, to) one at a time, forward or backward,
   * and writes the good ones (at their position + dstDelta, unless `sparse` and
   * all zero) before it returns; stops after the first bad sector with
   * `stopOnError`, after a failure that is not a media error (the end of the
   * file, another errno: `size` then looks at the source), at a failed write
   * (`writeError`: the reads it was for count as not made, `reached` is where
   * they begin), or once `maxMs` have passed. The same reads as one `read` per
   * sector, in one call. Undefined when it cannot (the engine then reads
   * sector by sector).
   */
  readSectors?(from: number, to: number, sectorSize: number, opts: SectorRunOptions): SectorRun | undefined;
}

export interface RescueOptions extends OpOptions {
  /** -b: sector size of the source in bytes. */
  sectorSize: number;
  /** -c: sectors read at a time while copying. */
  clusterSectors: number;
  /** -i: where the domain starts in the source. */
  inputPos: number;
  /** -o: where inputPos lands in the destination. */
  outputPos: number;
  /** -R */
  reverse: boolean;
  /** -N */
  noTrim: boolean;
  /** -n */
  noScrape: boolean;
  /** -r: retry passes (-1 = until none is left bad). */
  retryPasses: number;
  /** -K initial,max skip size in bytes. */
  skipInitial: number;
  skipMax: number;
  /** -a: reads slower than this (bytes/s) are skipped like errors in the skipping passes. */
  minReadRate?: number;
  /** -T: stop when no read has succeeded for this many ms. */
  timeoutMs?: number;
  /** -S: do not write all-zero blocks (the destination reads zeros already). */
  sparse: boolean;
  /** -y: every write is made durable (flushed) before the next read. */
  synchronous?: boolean;
  /** -m: only these ranges (finished blocks of a domain mapfile) are rescued. */
  domain?: Array<{ pos: number; size: number }>;
  /** Persist the map (atomically); `finished` at the very end. */
  saveMap(map: RescueMap, finished: boolean): Promise<void>;
  /** Minimum ms between periodic saves. */
  saveIntervalMs?: number;
  onStatus?(s: RescueStatus): void;
  now?(): number;
  /** Synchronous reads and writes of the same source and destination (faster; same reads). */
  io?: RescueSyncIo;
}

export interface RescueStatus {
  phase: 'copying' | 'trimming' | 'scraping' | 'retrying' | 'finished';
  pass: number;
  /** Position of the read in progress. */
  pos: number;
  rescued: number;
  nonTried: number;
  nonTrimmed: number;
  nonScraped: number;
  badSize: number;
  badAreas: number;
  readErrors: number;
  /** Bytes successfully read in this run. */
  readBytes: number;
  /** ms since the run started / since the last successful read. */
  elapsedMs: number;
  sinceLastGoodMs: number;
  domainSize: number;
}

export interface RescueResult extends RescueStatus {
  finished: boolean;
}

const PHASE_STATUS: Record<RescueStatus['phase'], CurrentStatus> = {
  copying: '?',
  trimming: '*',
  scraping: '/',
  retrying: '-',
  finished: '+',
};

export async function rescue(
  src: Storage,
  dst: Disk,
  map: RescueMap,
  o: RescueOptions,
): Promise<RescueResult> {
  const now = o.now ?? Date.now;
  const io = o.io;
  const ss = o.sectorSize;
  const cluster = ss * o.clusterSectors;
  const t0 = now();
  let lastGood = t0;
  let lastSave = t0;
  let readErrors = 0;
  let readBytes = 0;
  let phase: RescueStatus['phase'] = 'copying';
  const domainEnd = map.end;
  // Write-behind: the next read proceeds while earlier blocks are written. Each
  // write owns its buffer; at most WRITES_IN_FLIGHT are pending, and every save
  // waits for them (the map never claims data that is not written).
  const WRITES_IN_FLIGHT = 4;
  const pending = new Set<Promise<void>>();
  const free: Uint8Array[] = [];
  /** Cluster-sized buffers are reused: `take` a view of one, `release` it when done. */
  const take = (len: number): Uint8Array =>
    (free.pop() ?? (io ? io.buffer(cluster) : new Uint8Array(cluster))).subarray(0, len);
  const release = (b: Uint8Array): void => void free.push(new Uint8Array(b.buffer));
  const drain = async (): Promise<void> => {
    while (pending.size > 0) await Promise.race(pending);
  };
  /**
   * Reads whose write behind failed, with the status their range had before
   * the read (the caller marks it `+` when the read succeeds): put back before
   * the map is saved after the failure.
   */
  const unwritten: Array<{ pos: number; len: number; before: BlockStatus }> = [];
  const writeBehind = async (b: Uint8Array, at: number, pos: number): Promise<void> => {
    const before = map.statusAt(pos) ?? '?';
    while (pending.size >= WRITES_IN_FLIGHT) await Promise.race(pending);
    const p: Promise<void> = dst.write(b, at).finally(() => {
      pending.delete(p);
      release(b);
    });
    pending.add(p);
    // A failed write surfaces at the next race/drain; keep it from being unhandled meanwhile.
    p.catch(() => void unwritten.push({ pos, len: b.length, before }));
  };
  const domain = o.domain ?? [{ pos: map.start, size: map.end - map.start }];

  const status = (): RescueStatus => {
    const t = map.totals();
    return {
      phase,
      pass: map.currentPass,
      pos: map.currentPos,
      rescued: t['+'],
      nonTried: t['?'],
      nonTrimmed: t['*'],
      nonScraped: t['/'],
      badSize: t['-'],
      badAreas: t.areas['-'],
      readErrors,
      readBytes,
      elapsedMs: now() - t0,
      sinceLastGoodMs: now() - lastGood,
      domainSize: map.end - map.start,
    };
  };

  /** Makes what was written durable, on whichever path writes. */
  const flushDst = (): Promise<void> => (io ? io.flush() : dst.flush());

  // One save at a time: the sector workers of scraping tick concurrently, and two
  // saves at once would race on the mapfile's temporary file.
  let saving: Promise<void> | undefined;
  const save = async (finished = false): Promise<void> => {
    while (saving) await saving;
    const run = async (): Promise<void> => {
      await drain();
      await flushDst();
      await o.saveMap(map, finished);
      lastSave = now();
    };
    saving = run().finally(() => {
      saving = undefined;
    });
    await saving;
  };

  // Between phases as between reads, the map is saved when the interval is up
  // (like GNU ddrescue): each save flushes the destination first.
  const saveIfDue = async (): Promise<void> => {
    if (now() - lastSave >= (o.saveIntervalMs ?? 5000)) await save();
  };

  // The synchronous path holds the event loop: let it run every YIELD_MS (real
  // time, whatever `now` says), so that a signal handler can abort the signal.
  const YIELD_MS = 5;
  let lastYield = performance.now();
  const tick = async (): Promise<void> => {
    if (io && performance.now() - lastYield >= YIELD_MS) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      lastYield = performance.now();
    }
    if (o.signal?.aborted) {
      await save();
      throw new PlatterError('ECANCELED', 'interrupted: mapfile saved; run the same command again to resume');
    }
    if (o.timeoutMs !== undefined && now() - lastGood > o.timeoutMs) {
      await save();
      throw new PlatterError(
        'EIO',
        `no successful read for ${Math.round(o.timeoutMs / 1000)} s (-T): stopped, mapfile saved`,
      );
    }
    const t = now();
    if (saving) await saving;
    else await saveIfDue();
    // Status is a walk over the map: report it a few times a second, not per read.
    if (o.onStatus && t - lastStatus >= 100) {
      lastStatus = t;
      o.onStatus(status());
    }
  };
  let lastStatus = 0;

  /** Reads [pos, pos+len) of the source; true on success (and writes it out). */
  const attempt = async (pos: number, len: number): Promise<{ ok: boolean; slow: boolean }> => {
    map.currentPos = pos;
    const b = take(len);
    const start = now();
    try {
      if (io) io.read(b, pos);
      else await src.read(b, pos);
    } catch (e) {
      // A source that went away (a lost connection, a removed device) has no bad
      // sectors to record: the rescue stops, as GNU ddrescue's "input file disappeared".
      if (!(e instanceof PlatterError) || e.code === 'ECLOSED' || e.code === 'EGONE') throw e;
      readErrors++;
      release(b);
      await checkSource(pos);
      return { ok: false, slow: false };
    }
    const t = now();
    lastGood = t;
    readBytes += len;
    const at = pos - o.inputPos + o.outputPos;
    if (o.sparse && isAllZero(b)) release(b);
    else if (io || o.synchronous) {
      // Written now (-y: and made durable) rather than behind the next reads.
      try {
        if (io) io.write(b, at);
        else await dst.write(b, at);
      } finally {
        release(b);
      }
      if (o.synchronous) await flushDst();
    } else await writeBehind(b, at, pos);
    const slow = o.minReadRate !== undefined && t > start && (len * 1000) / (t - start) < o.minReadRate;
    return { ok: true, slow };
  };

  /** After a failed read: stop cleanly if the source shrank or vanished. */
  const checkSource = async (pos: number): Promise<void> => {
    let size: number;
    try {
      size = io?.size ? io.size() : await src.size();
    } catch (e) {
      await save();
      throw new PlatterError(
        'EIO',
        `${src.name}: source vanished at offset ${pos} (${(e as Error).message}); mapfile saved`,
      );
    }
    if (size < domainEnd) {
      await save();
      throw new PlatterError(
        'EIO',
        `${src.name}: source shrank to ${size} bytes (rescue domain ends at ${domainEnd}); mapfile saved`,
      );
    }
  };

  /** Work blocks of the given status, clipped to the domain, in the pass direction. */
  const work = (st: BlockStatus, forward: boolean): Block[] => {
    const out: Block[] = [];
    for (const b of map.find(st)) {
      for (const d of domain) {
        const a = Math.max(b.pos, d.pos);
        const z = Math.min(b.pos + b.size, d.pos + d.size);
        if (z > a) out.push({ pos: a, size: z - a, status: st });
      }
    }
    return forward ? out : out.reverse();
  };

  const enter = (p: RescueStatus['phase'], pass: number): void => {
    phase = p;
    map.currentStatus = PHASE_STATUS[p];
    map.currentPass = pass;
  };

  // --- copying ---------------------------------------------------------------
  const copyPass = async (pass: number, forward: boolean, skipping: boolean): Promise<void> => {
    enter('copying', pass);
    let skip = o.skipInitial;
    // In a skipping pass, `resumeAt` is where reading continues after a skip.
    let resumeAt = forward ? -1 : Number.POSITIVE_INFINITY;
    const halveSkip = (): void => {
      skip = Math.max(o.skipInitial, Math.floor(skip / 2));
    };
    /** After a failed (or slow) read that ended at `edge` in the pass direction: where reading resumes. */
    const skipFrom = (edge: number, failed: boolean): number => {
      resumeAt = forward ? alignUp(edge + skip, ss) : Math.max(0, alignDown(edge - skip, ss));
      if (failed) skip = Math.min(skip * 2, o.skipMax);
      return resumeAt;
    };
    for (const blk of work('?', forward)) {
      const lo = blk.pos;
      const hi = blk.pos + blk.size;
      let pos = forward ? Math.max(lo, resumeAt) : Math.min(hi, resumeAt);
      while (forward ? pos < hi : pos > lo) {
        // Whole clusters in one call where the synchronous path offers it (the same reads).
        const run =
          pos % cluster !== 0
            ? undefined
            : forward
              ? await readRun(pos, alignDown(hi, cluster), cluster, true, skipping, '*')
              : await readRun(alignUp(lo, cluster), pos, cluster, false, skipping, '*');
        if (run) {
          // Each good read halves the skip size, as one read at a time would.
          for (let k = run.good / cluster; k > 0 && skip > o.skipInitial; k--) halveSkip();
          pos = run.reached;
          if (skipping && run.bad.length > 0) pos = skipFrom(pos, true);
          continue;
        }
        await tick();
        const [a, b] = forward
          ? [pos, Math.min(hi, Math.floor(pos / cluster) * cluster + cluster)]
          : [Math.max(lo, Math.ceil(pos / cluster) * cluster - cluster), pos];
        const r = await attempt(a, b - a);
        map.set(a, b - a, r.ok ? '+' : '*');
        if (r.ok) halveSkip();
        pos = forward ? b : a;
        if (skipping && (!r.ok || r.slow)) pos = skipFrom(pos, !r.ok);
      }
    }
  };

  // --- sector-by-sector helpers ---------------------------------------------------
  /** Reads the sector-aligned piece [pos, end) (at most one sector). */
  const sector = async (pos: number, end: number): Promise<boolean> => {
    await tick();
    const len = end - pos;
    const r = await attempt(pos, len);
    map.set(pos, len, r.ok ? '+' : '-');
    return r.ok;
  };

  /**
   * A run of reads of `unit` bytes each over [a, z) (multiples of it) in the
   * direction, made by the synchronous path in one call (io.readSectors): the
   * map (good reads `+`, failed ones `bad`) and the counters as `attempt` and
   * its callers would leave them, read by read. Undefined when the path offers
   * no runs (the caller reads one piece itself): -y flushes after every write
   * and -a times every read.
   */
  const readRun = async (
    a: number,
    z: number,
    unit: number,
    forward: boolean,
    stopOnError: boolean,
    bad: BlockStatus,
  ): Promise<SectorRun | undefined> => {
    if (!io?.readSectors || o.synchronous || o.minReadRate !== undefined || z <= a) return undefined;
    await tick();
    const dstDelta = o.outputPos - o.inputPos;
    const r = io.readSectors(a, z, unit, {
      forward,
      stopOnError,
      sparse: o.sparse,
      dstDelta,
      maxMs: YIELD_MS,
    });
    if (!r) return undefined;
    // After a failed write, `reached` is where the reads that are not on the destination begin.
    const reached = r.reached;
    const [lo, hi] = forward ? [a, reached] : [reached, z];
    if (hi > lo) map.set(lo, hi - lo, '+');
    for (const b of r.bad) map.set(b, unit, bad);
    map.currentPos = forward ? Math.max(a, reached - unit) : reached;
    readErrors += r.bad.length;
    readBytes += r.good;
    if (r.good > 0) lastGood = now();
    if (r.writeError) throw r.writeError;
    if (r.readError) throw r.readError;
    if (r.bad.length > 0) await checkSource(r.bad[r.bad.length - 1]);
    return r;
  };

  /** readRun of the whole sectors from `pos` to the aligned end of [from, to) in the direction. */
  const runOfSectors = async (
    pos: number,
    from: number,
    to: number,
    forward: boolean,
    stopOnError: boolean,
  ): Promise<{ pos: number; stopped: boolean } | undefined> => {
    if (pos % ss !== 0) return undefined;
    const r = forward
      ? await readRun(pos, alignDown(to, ss), ss, true, stopOnError, '-')
      : await readRun(Math.ceil(from / ss) * ss, pos, ss, false, stopOnError, '-');
    return r && { pos: r.reached, stopped: r.bad.length > 0 && stopOnError };
  };

  /**
   * Every sector piece of [from, to) in the direction, until one fails when
   * `stopOnError`: in runs where the synchronous path offers them, else one by
   * one. Returns where reading stopped (past the failed piece).
   */
  const sectorsInOrder = async (
    from: number,
    to: number,
    forward: boolean,
    stopOnError: boolean,
  ): Promise<number> => {
    let pos = forward ? from : to;
    while (forward ? pos < to : pos > from) {
      const run = await runOfSectors(pos, from, to, forward, stopOnError);
      if (run) {
        pos = run.pos;
        if (run.stopped) break;
        continue;
      }
      const [a, b] = forward
        ? [pos, Math.min(alignDown(pos, ss) + ss, to)]
        : [Math.max(from, alignDown(pos - 1, ss)), pos];
      const ok = await sector(a, b);
      pos = forward ? b : a;
      if (!ok && stopOnError) break;
    }
    return pos;
  };

  const trim = async (): Promise<void> => {
    enter('trimming', 1);
    for (const blk of work('*', !o.reverse)) {
      const end = blk.pos + blk.size;
      // Leading edge forward (trailing edge backward with -R), then the other edge.
      let lo = blk.pos;
      let hi = end;
      const edges = o.reverse ? ['back', 'front'] : ['front', 'back'];
      for (const edge of edges) {
        if (lo >= hi) break;
        if (edge === 'front') lo = await sectorsInOrder(lo, hi, true, true);
        else hi = await sectorsInOrder(lo, hi, false, true);
      }
      if (hi > lo) map.set(lo, hi - lo, '/');
    }
  };

  /**
   * Every sector of [from, to), in the given direction (sectors aligned to the
   * source). Each sector is read once whatever happens to the others, so up to
   * SECTORS_IN_FLIGHT reads overlap: the same reads as one by one, less waiting.
   * Synchronous reads cannot overlap: with `io` they are made in order, in runs
   * where it offers them (sectorsInOrder).
   */
  const SECTORS_IN_FLIGHT = 8;
  const eachSector = async (from: number, to: number, forward: boolean): Promise<void> => {
    if (io) {
      await sectorsInOrder(from, to, forward, false);
      return;
    }
    const pieces: Array<[number, number]> = [];
    for (let p = from; p < to; ) {
      const next = Math.min(alignDown(p, ss) + ss, to);
      pieces.push([p, next]);
      p = next;
    }
    if (!forward) pieces.reverse();
    let i = 0;
    const worker = async (): Promise<void> => {
      while (i < pieces.length) {
        const [a, b] = pieces[i++];
        await sector(a, b);
      }
    };
    await Promise.all(Array.from({ length: Math.min(SECTORS_IN_FLIGHT, pieces.length) }, worker));
  };

  const scrape = async (): Promise<void> => {
    enter('scraping', 1);
    for (const blk of work('/', !o.reverse)) await eachSector(blk.pos, blk.pos + blk.size, !o.reverse);
  };

  const retry = async (pass: number): Promise<void> => {
    enter('retrying', pass);
    const forward = o.reverse ? pass % 2 === 0 : pass % 2 === 1;
    for (const blk of work('-', forward)) await eachSector(blk.pos, blk.pos + blk.size, forward);
  };

  /**
   * After a failure that stops the run (a destination that is full or failing,
   * mostly): the map as far as the destination holds it, saved, so that no
   * progress is lost; the error says so. A failure that saved already says so.
   */
  const savedAfter = async (e: unknown): Promise<unknown> => {
    if (!(e instanceof PlatterError) || e.message.includes('mapfile saved')) return e;
    try {
      while (saving) await saving.catch(() => undefined);
      await Promise.allSettled([...pending]);
      for (const u of unwritten) map.set(u.pos, u.len, u.before);
      // Failed in the last save: not finished after all; the first phase with work left.
      if (phase === 'finished') {
        enter(
          has('?') ? 'copying' : has('*') ? 'trimming' : has('/') ? 'scraping' : 'retrying',
          map.currentPass,
        );
      }
      await flushDst();
      await o.saveMap(map, false);
    } catch {
      return e; // the first failure is the one to report
    }
    return new PlatterError(e.code, `${e.message}; mapfile saved`);
  };

  const fwd = !o.reverse;
  const has = (st: BlockStatus): boolean => work(st, true).length > 0;
  let finished: boolean;
  try {
    finished = await runPhases();
  } catch (e) {
    throw await savedAfter(e);
  }
  const s = status();
  o.onStatus?.(s);
  return { ...s, finished };

  /** ddrescue's phases, then the last save; whether the rescue is complete. */
  async function runPhases(): Promise<boolean> {
    await save();
    if (has('?')) {
      await copyPass(1, fwd, true);
      if (has('?')) await copyPass(2, !fwd, true);
      if (has('?')) await copyPass(3, fwd, false);
      await saveIfDue();
    }
    if (!o.noTrim && has('*')) {
      await trim();
      await saveIfDue();
    }
    if (!o.noScrape && has('/')) {
      await scrape();
      await saveIfDue();
    }
    for (let pass = 1; (o.retryPasses < 0 || pass <= o.retryPasses) && has('-'); pass++) {
      await retry(pass);
      await saveIfDue();
    }
    enter('finished', map.currentPass);
    const done = !has('?') && (o.noTrim || !has('*')) && (o.noScrape || !has('/'));
    await save(done);
    return done;
  }
}

function alignUp(n: number, a: number): number {
  return Math.ceil(n / a) * a;
}

function alignDown(n: number, a: number): number {
  return Math.floor(n / a) * a;
}
