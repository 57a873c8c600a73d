/**
 * copyDisk(src, dst): the one copy engine (convert, acquire, rescue, commit, NBD).
 *
 * How it moves bytes:
 *   - It walks `src.extents()` a window at a time, so `hole` and `zero` ranges are
 *     never read. For a full chain a `hole` is past the bottom layer: zeros.
 *   - `data` ranges are cut into chunks whose boundaries are multiples of
 *     `chunkSize` (itself a multiple of dst.granularity), so an allocating or
 *     compressing writer receives whole clusters.
 *   - Every chunk read is scanned for zeros in blocks of `zeroBlock` bytes
 *     (default max(4 KiB, dst.granularity), like qemu-img's `-S 4k`): all-zero
 *     runs are not written when the destination already reads zeros
 *     (`dstZeroed`), and are written with writeZeroes({mayUnmap:true}) otherwise.
 *   - Writes go out in offset order by default (`ordered`), while up to
 *     `parallel` reads run ahead.
 *   - `parallel` chunks are in flight at once, each with its own buffer, so
 *     memory is parallel × chunkSize (1 MiB × 4) whatever the size of the disk.
 *     Buffers come from ioBuffer() (page-aligned: see ops/buffers.ts).
 *   - `onData`, if given, sees every byte of the source exactly once and in
 *     offset order (zeros as `data: undefined`), e.g. to hash while copying.
 *   - Host I/O (ops/host-copy.ts): where the destination reads zeros
 *     (`dstZeroed`), nobody watches the bytes (no `onData`) and the source keeps
 *     its data verbatim in host stores (Disk.hostSpans), data is copied store to
 *     store when the destination keeps it verbatim too, or allocates it on
 *     request once a scan met only data (hostSpans 'allocate', allocated
 *     first: zeros found there are given back); unordered batches of up to
 *     HOST_BATCH, those into allocated space starting at SCAN_BUFFER and
 *     doubling while they meet no zeros. Otherwise (at first, and after a copy
 *     met zeros) the host reads and scans data for zeros into a SCAN_BUFFER per
 *     worker, and what is not zero is placed in offset order (hostSpans
 *     'allocate' and one Storage.writeSpans per batch, or write()): one call to
 *     the host per batch instead of a read and a write per chunk.
 *   - The signal stops it between chunks with ECANCELED; chunks in flight finish
 *     first, so no write is torn. What the destination holds then is the
 *     caller's business (the CLI writes to DST.partial and renames at the end).
 */
import { alignDown, isAllZero } from '../core/bytes.js';
import type { Disk, Extent } from '../core/disk.js';
import { invalid, PlatterError, throwIfAborted } from '../core/errors.js';
import type { CopySpan } from '../core/storage.js';
import { ioBuffer } from './buffers.js';
import {
  giveBack,
  HOST_BATCH,
  type HostBatch,
  HostBatcher,
  type HostPlanner,
  hostPlanner,
  placeRuns,
  restOf,
  SCAN_BUFFER,
  SCAN_ZERO_BATCH,
} from './host-copy.js';
import type { OpOptions } from './progress.js';

export interface CopyOptions extends OpOptions {
  /** The destination already reads zeros everywhere (freshly created): zero ranges are skipped. */
  dstZeroed?: boolean;
  /**
   * Bytes per read/write; rounded to a multiple of dst.granularity. Default 1 MiB
   * (qemu-img uses 2 MiB): on the 2-core bench machine 2 MiB chunks were slower,
   * raw→raw of random data 1.75-2.09 s against 1.28-1.49 s in interleaved runs,
   * the 3-deep qcow2 chain 0.65-0.78 s against 0.62-0.67 s (BENCHMARKS.md).
   */
  chunkSize?: number;
  /**
   * Chunks in flight. Default 4: more buffers waiting for their turn to be
   * written fall out of the CPU caches before the write copies them (8 of
   * 1 MiB measured ~5 % slower on a 2-core machine, 8 of 2 MiB ~30 %).
   */
  parallel?: number;
  /** Zero-detection unit in bytes (a power of two). Default max(4096, dst.granularity). */
  zeroBlock?: number;
  /** Copy only [offset, offset+length) (same offsets on both disks). Default: all of src. */
  offset?: number;
  length?: number;
  /** Called in offset order with every range of the source; `data` undefined means zeros. */
  onData?: (range: { offset: number; length: number; data?: Uint8Array }) => void | Promise<void>;
  /** Progress phase name. Default 'copying'. */
  phase?: string;
  /** Flush the destination at the end. Default true. */
  flush?: boolean;
  /**
   * Write in offset order (reads still run ahead in parallel), as qemu-img
   * convert does without -W. Default true: parallel writes to one host file
   * contend on its inode lock and were measured 2-3× slower here (ext4).
   * false suits destinations with high latency and no ordering cost (NBD).
   */
  ordered?: boolean;
}

export interface CopyResult {
  /** Bytes covered (the source size, or `length`). */
  total: number;
  /** Bytes read from the source (data extents). */
  bytesRead: number;
  /** Bytes written with write(). */
  bytesWritten: number;
  /** Bytes made zero with writeZeroes() (0 when dstZeroed). */
  bytesZeroed: number;
  /** Bytes not touched on the destination because they are zeros and it already read zeros. */
  bytesSkipped: number;
}

const MiB = 1 << 20;
/** How much of the source one extents() call covers. */
const EXTENT_WINDOW = 1024 * MiB;

type Task = { kind: 'zero' | 'read'; offset: number; length: number } | HostBatch;

/**
 * Splits the source into tasks: data extents in aligned chunks (or host-copy
 * batches), zero ranges as one task per window.
 */
async function* tasks(
  src: Disk,
  start: number,
  end: number,
  chunk: number,
  host: HostPlanner | undefined,
  scanLimit: () => number,
  allocLimit: () => number,
  widen: number,
): AsyncGenerator<Task> {
  // Host copies gathered per copier until a batch is full (or the source ends).
  const batches = new HostBatcher(scanLimit, allocLimit);
  for (let win = start; win < end; win += EXTENT_WINDOW) {
    const winEnd = Math.min(end, win + EXTENT_WINDOW);
    let exts: Extent[] = await src.extents(win, winEnd - win);
    if (widen > 1) exts = widened(exts, widen, win, winEnd);
    for (const e of exts) {
      switch (e.status) {
        case 'zero':
        case 'hole':
          yield { kind: 'zero', offset: e.offset, length: e.length };
          break;
        case 'data': {
          const eEnd = e.offset + e.length;
          // The planner is asked for at most SCAN_BUFFER at a time; chunks are cut at chunk boundaries.
          const step = host ? SCAN_BUFFER : chunk;
          for (let pos = e.offset; pos < eEnd; ) {
            const next = Math.min(eEnd, alignDown(pos, step) + step);
            const plan = host && (await host.plan(pos, next - pos));
            if (plan) {
              yield* batches.add(plan);
            } else {
              for (let p = pos; p < next; ) {
                const q = Math.min(next, alignDown(p, chunk) + chunk);
                yield { kind: 'read', offset: p, length: q - p };
                p = q;
              }
            }
            pos = next;
          }
          break;
        }
        default: {
          const never: never = e.status;
          throw new Error(`internal error: status ${never}`);
        }
      }
    }
  }
  yield* batches.rest();
}

/**
 * Data extents grown to whole `unit`s (within [from, to)), the zero and hole
 * ranges they cover given up to them: a destination that stores whole granules
 * better (DiskFeatures.wholeGranules) then receives whole granules.
 */
export function widened(exts: readonly Extent[], unit: number, from: number, to: number): Extent[] {
  const data: Array<[number, number]> = [];
  for (const e of exts) {
    if (e.status !== 'data') continue;
    const a = Math.max(from, alignDown(e.offset, unit));
    const b = Math.min(to, alignDown(e.offset + e.length + unit - 1, unit));
    const last = data[data.length - 1];
    if (last && a <= last[1]) last[1] = Math.max(last[1], b);
    else data.push([a, b]);
  }
  const out: Extent[] = [];
  let d = 0;
  for (const e of exts) {
    if (e.status === 'data') continue;
    // The parts of this zero or hole range that no widened data range covers.
    let pos = e.offset;
    const eEnd = e.offset + e.length;
    while (d < data.length && data[d][1] <= pos) d++;
    for (let k = d; k < data.length && data[k][0] < eEnd && pos < eEnd; k++) {
      if (data[k][0] > pos) out.push({ ...e, offset: pos, length: data[k][0] - pos });
      pos = Math.max(pos, data[k][1]);
    }
    if (pos < eEnd) out.push({ ...e, offset: pos, length: eEnd - pos });
  }
  for (const [a, b] of data) out.push({ offset: a, length: b - a, status: 'data', depth: 0 });
  return out.sort((x, y) => x.offset - y.offset);
}

/** isAllZero of buf[a, b), rejecting most data blocks by their first and last bytes without a native call. */
function blockIsZero(buf: Uint8Array, a: number, b: number): boolean {
  if (buf[a] !== 0 || buf[b - 1] !== 0 || buf[a + ((b - a) >> 1)] !== 0) return false;
  return isAllZero(buf.subarray(a, b));
}

function lcmPow2(a: number, b: number): number {
  return Math.max(a, b) % Math.min(a, b) === 0 ? Math.max(a, b) : a * b;
}

export async function copyDisk(src: Disk, dst: Disk, opts: CopyOptions = {}): Promise<CopyResult> {
  const start = opts.offset ?? 0;
  const length = opts.length ?? src.size - start;
  const end = start + length;
  if (
    !Number.isSafeInteger(start) ||
    !Number.isSafeInteger(length) ||
    start < 0 ||
    length < 0 ||
    end > src.size
  ) {
    throw invalid(`copy range ${start}+${length} is outside ${src.name} (size ${src.size})`);
  }
  if (end > dst.size) {
    throw new PlatterError(
      'ERANGE',
      `${dst.name}: destination is smaller (${dst.size} bytes) than the source (${end})`,
    );
  }
  const g = Math.max(1, dst.granularity);
  const zeroBlock = opts.zeroBlock ?? Math.max(4096, g);
  const unit = lcmPow2(g, zeroBlock);
  const chunk = Math.max(unit, alignDown(opts.chunkSize ?? MiB, unit));
  const parallel = Math.max(1, Math.floor(opts.parallel ?? 4));
  const dstZeroed = opts.dstZeroed ?? false;
  const phase = opts.phase ?? 'copying';
  const { signal, onProgress, onData } = opts;
  const ordered = opts.ordered ?? true;

  const result: CopyResult = {
    total: length,
    bytesRead: 0,
    bytesWritten: 0,
    bytesZeroed: 0,
    bytesSkipped: 0,
  };
  let done = 0;
  onProgress?.({ phase, done, total: length });

  const zeroRange = async (offset: number, len: number): Promise<void> => {
    if (len === 0) return;
    if (dstZeroed) {
      result.bytesSkipped += len;
      return;
    }
    await dst.writeZeroes(offset, len, { mayUnmap: true });
    result.bytesZeroed += len;
  };

  /** Writes a chunk that was read: non-zero runs of zeroBlocks with write(), zero runs as zeros. */
  const writeChunk = async (buf: Uint8Array, offset: number): Promise<void> => {
    if (isAllZero(buf)) return zeroRange(offset, buf.length);
    let runStart = 0;
    let runZero: boolean | undefined;
    const flushRun = async (to: number): Promise<void> => {
      if (runZero === undefined || to === runStart) return;
      if (runZero) await zeroRange(offset + runStart, to - runStart);
      else {
        await dst.write(buf.subarray(runStart, to), offset + runStart);
        result.bytesWritten += to - runStart;
      }
    };
    // Blocks follow absolute zeroBlock boundaries so that zero runs stay aligned.
    for (let i = 0; i < buf.length; ) {
      const next = Math.min(buf.length, alignDown(offset + i, zeroBlock) + zeroBlock - offset);
      const z = blockIsZero(buf, i, next);
      if (z !== runZero) {
        await flushRun(i);
        runStart = i;
        runZero = z;
      }
      i = next;
    }
    await flushRun(buf.length);
  };

  // Zero ranges longer than this are split, so progress and cancellation keep moving.
  const zeroStep = Math.max(chunk, 256 * MiB);
  // Zero blocks left unwritten must already read zeros, and onData needs the bytes in hand.
  // A destination that wants whole granules gets them from the chunked reads: the host
  // planner's scan buffers may cut a large granule (a 2 MiB cluster) in pieces.
  const host = dstZeroed && !onData && !dst.features.wholeGranules ? hostPlanner(src, dst) : undefined;
  // Scans of zeros only may span more than a scan buffer holds (see SCAN_BUFFER).
  let scansFindData = true;
  // Copies into space allocated for them start small and double while they meet no zeros:
  // what a run of zeros allocates before a copy says so is what the copies in flight hold.
  let allocBatch = SCAN_BUFFER;
  const iter = tasks(
    src,
    start,
    end,
    chunk,
    host,
    () => (scansFindData ? SCAN_BUFFER : SCAN_ZERO_BATCH),
    () => allocBatch,
    dst.features.wholeGranules ? unit : 0,
  );
  let failed: unknown;
  // In-order delivery to onData: each task waits for the previous one's turn.
  let turn: Promise<void> = Promise.resolve();

  const nextTask = async (): Promise<Task | undefined> => {
    const r = await iter.next();
    return r.done ? undefined : r.value;
  };
  // The generator is not reentrant: serialise pulls from it.
  let pulling: Promise<unknown> = Promise.resolve();
  const pull = (): Promise<Task | undefined> => {
    const p = pulling.then(nextTask);
    pulling = p.catch(() => undefined);
    return p;
  };

  const worker = async (): Promise<void> => {
    let buf: Uint8Array | undefined;
    let scanBuf: Uint8Array | undefined;
    while (failed === undefined) {
      throwIfAborted(signal);
      const t = await pull();
      if (!t || failed !== undefined) return;
      // Take this task's turn for onData now, while tasks are still in offset order.
      const prev = turn;
      let release!: () => void;
      turn = new Promise<void>((r) => {
        release = r;
      });
      try {
        if (t.kind === 'copy') {
          // Unordered: nothing watches the bytes, and the batches do not overlap.
          const r = await t.copier(t.spans, zeroBlock);
          result.bytesRead += t.length;
          result.bytesWritten += r.written;
          result.bytesSkipped += r.skipped;
          // Zeros in space allocated for them: given back, and the next ranges are scanned first.
          if (host && r.zeroRuns.length > 0 && (await giveBack(dst, t.spans, r.zeroRuns)) > 0) {
            host.allocateFirst = false;
            allocBatch = SCAN_BUFFER;
          } else if (t.spans.some((sp) => sp.disk !== undefined)) {
            allocBatch = Math.min(HOST_BATCH, 2 * allocBatch);
          }
          done += t.length;
          onProgress?.({ phase, done, total: length });
        } else if (t.kind === 'scan') {
          if (!scanBuf) scanBuf = ioBuffer(SCAN_BUFFER);
          let spans: readonly CopySpan[] = t.spans;
          let written = 0;
          let waited = false;
          while (spans.length > 0) {
            const got = await t.reader(scanBuf, spans, zeroBlock);
            if (got.consumed <= 0) throw new Error('internal error: the span reader made no progress');
            result.bytesRead += got.consumed;
            if (ordered && !waited) {
              await prev;
              waited = true;
              if (failed !== undefined) return;
            }
            const placed = await placeRuns(dst, scanBuf, got.runs, chunk);
            spans = restOf(spans, got.consumed);
            // The next batch may allocate while this one's last bytes go out (its own buffer).
            if (spans.length === 0) void prev.then(release);
            await placed.direct;
            written += placed.written;
            done += got.consumed;
            onProgress?.({ phase, done, total: length });
          }
          scansFindData = written > 0;
          if (host && written === t.length) host.allocateFirst = true;
          result.bytesWritten += written;
          result.bytesSkipped += t.length - written;
        } else if (t.kind === 'read') {
          if (!buf) buf = ioBuffer(chunk);
          const data = buf.subarray(0, t.length);
          await src.read(data, t.offset);
          result.bytesRead += t.length;
          if (ordered || onData) {
            await prev;
            if (failed !== undefined) return;
          }
          await onData?.({ offset: t.offset, length: t.length, data });
          await writeChunk(data, t.offset);
          done += t.length;
          onProgress?.({ phase, done, total: length });
        } else {
          // Zeros a zeroed destination already holds need no turn (nothing is written).
          if (onData || (ordered && !dstZeroed)) {
            await prev;
            if (failed !== undefined) return;
          }
          // Zeros: no buffer; long ranges in steps so progress and cancellation move.
          for (let pos = t.offset; pos < t.offset + t.length; ) {
            throwIfAborted(signal);
            const n = Math.min(zeroStep, t.offset + t.length - pos);
            await zeroRange(pos, n);
            pos += n;
            done += n;
            onProgress?.({ phase, done, total: length });
          }
          await onData?.({ offset: t.offset, length: t.length });
        }
      } finally {
        // Never before the previous task's turn, even for a task that did not wait for it:
        // the turns stay in offset order for the tasks that do.
        void prev.then(release);
      }
    }
  };

  const workers = Array.from({ length: parallel }, () =>
    worker().catch((e) => {
      failed ??= e;
    }),
  );
  await Promise.all(workers);
  if (failed !== undefined) {
    await iter.return(undefined).catch(() => undefined);
    throw failed;
  }
  if (opts.flush ?? true) await dst.flush();
  return result;
}
