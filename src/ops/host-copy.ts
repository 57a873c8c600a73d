/**
 * Host I/O for the copy engine, where a disk says where its data lies in host
 * stores (Disk.hostSpans):
 *
 *   copy  both sides keep the data verbatim and the destination's store copies
 *         from the source's (Storage.copierFrom): store to store, never through
 *         JavaScript memory, in batches of up to HOST_BATCH bytes;
 *   scan  only the source does (the destination allocates: an image format):
 *         the source's store reads a batch of spans and scans it for zeros in
 *         one call (Storage.readSpans), and the engine writes the runs that are
 *         not zero through the destination disk.
 *
 * An allocating destination is also copied into store to store ("allocate
 * first") once a scan has met nothing but data: the range is allocated before
 * it is read (hostSpans 'allocate'), then copied like raw to raw, without the
 * trip through a buffer. The copier leaves zero blocks unwritten and says
 * where; the engine gives that space back (writeZeroes with mayUnmap), so a
 * run of zeros costs no more than the batches in flight when it began, and it
 * scans again (allocating only what is not zero) until a scan meets only data.
 */
import { alignDown } from '../core/bytes.js';
import type { Disk, HostSpan } from '../core/disk.js';
import {
  type CopySpan,
  type DataRun,
  type SpanCopier,
  type SpanReader,
  type Storage,
  type StoreRange,
  writeSpansTo,
} from '../core/storage.js';

const MiB = 1 << 20;

/**
 * Data bytes per host copy. With 32 MiB the main thread wakes once per batch
 * (some 5-15 ms of copying), so progress and cancellation still move; 4 and
 * 8 MiB batches were 5-25 % slower on the bench machine (BENCHMARKS.md).
 */
export const HOST_BATCH = 32 * MiB;
/**
 * Each worker's scan buffer. A scan stops when its buffer is full, but all
 * zero pieces take no room, so a batch of zeros may span much more:
 * SCAN_ZERO_BATCH while the last scan found only zeros. 2 MiB: 4 MiB buffers
 * put `convert -c` (compression workers) past 200 MiB of peak RSS here.
 */
export const SCAN_BUFFER = 2 * MiB;
export const SCAN_ZERO_BATCH = 32 * MiB;

/** A span to copy; `disk`: the disk offset of destination space allocated for it (allocate first). */
export interface PlannedSpan extends CopySpan {
  disk?: number;
}

/** Spans for one copier or one reader; `to` is a destination store offset (copy) or a disk offset (scan). */
export type HostBatch =
  | { kind: 'copy'; copier: SpanCopier; spans: PlannedSpan[]; length: number }
  | { kind: 'scan'; reader: SpanReader; spans: CopySpan[]; length: number };

/** What a data range needs: spans per copier, or spans per reader. */
export type HostPlan =
  | { kind: 'copy'; spans: Map<SpanCopier, PlannedSpan[]> }
  | { kind: 'scan'; spans: Map<SpanReader, CopySpan[]> };

export interface HostPlanner {
  /** The host I/O for the data range [offset, offset+length), or null when the source cannot say where it is. */
  plan(offset: number, length: number): Promise<HostPlan | null>;
  /**
   * Whether ranges the destination would allocate are allocated now and
   * copied store to store (the engine turns it on when a scan meets only
   * data, off when copies meet zeros).
   */
  allocateFirst: boolean;
}

function listOf<K, S extends CopySpan>(m: Map<K, S[]>, k: K): S[] {
  const l = m.get(k) ?? [];
  m.set(k, l);
  return l;
}

export function hostPlanner(src: Disk, dst: Disk): HostPlanner {
  const copiers = new Map<Storage, Map<Storage, SpanCopier | undefined>>();
  const copierOf = (from: Storage, to: Storage): SpanCopier | undefined => {
    const byDst = copiers.get(from) ?? new Map<Storage, SpanCopier | undefined>();
    copiers.set(from, byDst);
    if (!byDst.has(to)) byDst.set(to, to.copierFrom?.(from));
    return byDst.get(to);
  };

  /** Spans from `from` to `to` (`allocated`: space allocated for this copy, to give back where it stays zero). */
  const copyPlan = (
    offset: number,
    length: number,
    from: HostSpan[],
    to: HostSpan[],
    allocated: boolean,
  ): HostPlan | null => {
    const spans = new Map<SpanCopier, PlannedSpan[]>();
    // Both lists tile the range in order: walk them together.
    let i = 0;
    let j = 0;
    for (let pos = offset; pos < offset + length; ) {
      const a = from[i];
      const b = to[j];
      const n = Math.min(a.offset + a.length, b.offset + b.length) - pos;
      const copier = copierOf(a.storage, b.storage);
      if (!copier) return null;
      const span: PlannedSpan = { from: a.at + (pos - a.offset), to: b.at + (pos - b.offset), length: n };
      if (allocated) span.disk = pos;
      listOf(spans, copier).push(span);
      pos += n;
      if (pos === a.offset + a.length) i++;
      if (pos === b.offset + b.length) j++;
    }
    return { kind: 'copy', spans };
  };

  const scanPlan = (from: HostSpan[]): HostPlan | null => {
    const spans = new Map<SpanReader, CopySpan[]>();
    for (const a of from) {
      if (!a.storage.readSpans) return null;
      listOf(spans, a.storage.readSpans).push({ from: a.at, to: a.offset, length: a.length });
    }
    return { kind: 'scan', spans };
  };

  const planner: HostPlanner = {
    // Off until a scan meets only data: zeros at the start are never allocated.
    allocateFirst: false,
    async plan(offset, length) {
      const from = await src.hostSpans(offset, length, 'read');
      if (!from) return null;
      // Allocate first: a range the destination allocates is one it does not hold yet (asked first,
      // as a new image holds nothing); else where it keeps the range verbatim already.
      if (planner.allocateFirst) {
        const got = await dst.hostSpans(offset, length, 'allocate');
        if (got) {
          const plan = copyPlan(offset, length, from, got, true);
          if (plan) return plan;
          // No store-to-store copy between these stores: give the space back and scan from now on.
          planner.allocateFirst = false;
          await dst.writeZeroes(offset, length, { mayUnmap: true });
          return scanPlan(from);
        }
      }
      const to = await dst.hostSpans(offset, length, 'write');
      return (to && copyPlan(offset, length, from, to, false)) || scanPlan(from);
    },
  };
  return planner;
}

/**
 * Gives back the destination space allocated for a copy (PlannedSpan.disk)
 * that the copier left unwritten because it was all zeros (`zeroRuns`,
 * destination store ranges): the disk makes those ranges zeros again and may
 * free them. Resolves the bytes given back.
 */
export async function giveBack(
  dst: Disk,
  spans: readonly PlannedSpan[],
  zeroRuns: readonly StoreRange[],
): Promise<number> {
  const ranges: Array<[number, number]> = [];
  for (const z of zeroRuns) {
    for (const sp of spans) {
      if (sp.disk === undefined) continue;
      const a = Math.max(z.offset, sp.to);
      const b = Math.min(z.offset + z.length, sp.to + sp.length);
      if (a >= b) continue;
      const at = sp.disk + (a - sp.to);
      const last = ranges[ranges.length - 1];
      if (last && last[0] + last[1] === at) last[1] += b - a;
      else ranges.push([at, b - a]);
    }
  }
  let given = 0;
  for (const [at, n] of ranges) {
    await dst.writeZeroes(at, n, { mayUnmap: true });
    given += n;
  }
  return given;
}

/**
 * Places scanned runs (`at` in `buf`) on the destination in order: where it
 * allocates them and says where (hostSpans 'allocate'), they are gathered per
 * store for one write each; elsewhere they go through write(), in chunks as the
 * read path writes (a compressing writer holds what it is given). Resolves
 * once every run is placed, with the promise of the gathered writes (which
 * need no turn: nothing else writes there).
 */
export async function placeRuns(
  dst: Disk,
  buf: Uint8Array,
  runs: readonly DataRun[],
  chunk: number,
): Promise<{ written: number; direct: Promise<unknown> }> {
  const direct = new Map<Storage, CopySpan[]>();
  let written = 0;
  for (const r of runs) {
    const spans = await dst.hostSpans(r.to, r.length, 'allocate');
    if (spans) {
      for (const sp of spans)
        listOf(direct, sp.storage).push({ from: r.at + (sp.offset - r.to), to: sp.at, length: sp.length });
    } else {
      for (let p = 0; p < r.length; ) {
        const q = Math.min(r.length, alignDown(r.to + p, chunk) + chunk - r.to);
        await dst.write(buf.subarray(r.at + p, r.at + q), r.to + p);
        p = q;
      }
    }
    written += r.length;
  }
  return {
    written,
    direct: Promise.all([...direct].map(([storage, spans]) => writeSpansTo(storage, buf, spans))),
  };
}

/** The spans after the first `consumed` bytes of them. */
export function restOf(spans: readonly CopySpan[], consumed: number): CopySpan[] {
  const out: CopySpan[] = [];
  let skip = consumed;
  for (const sp of spans) {
    if (skip >= sp.length) {
      skip -= sp.length;
      continue;
    }
    out.push({ from: sp.from + skip, to: sp.to + skip, length: sp.length - skip });
    skip = 0;
  }
  return out;
}

/**
 * Gathers planned spans into batches: copies until HOST_BATCH bytes (copies
 * into space allocated for them: `allocLimit`), scans while they fit
 * `scanLimit` (the planner is asked for at most SCAN_BUFFER at a time).
 */
export class HostBatcher {
  private readonly pending = new Map<SpanCopier | SpanReader, HostBatch>();

  constructor(
    private readonly scanLimit: () => number,
    private readonly allocLimit: () => number,
  ) {}

  /** Adds a plan; returns the batches that are ready. */
  add(plan: HostPlan): HostBatch[] {
    const ready: HostBatch[] = [];
    const take = (b: HostBatch, spans: CopySpan[]): void => {
      for (const sp of spans) {
        b.spans.push(sp);
        b.length += sp.length;
      }
    };
    if (plan.kind === 'copy') {
      for (const [copier, spans] of plan.spans) {
        const b = this.pending.get(copier) ?? { kind: 'copy', copier, spans: [], length: 0 };
        this.pending.set(copier, b);
        take(b, spans);
        const allocated = spans.some((sp) => sp.disk !== undefined);
        if (b.length >= (allocated ? this.allocLimit() : HOST_BATCH)) {
          this.pending.delete(copier);
          ready.push(b);
        }
      }
      return ready;
    }
    for (const [reader, spans] of plan.spans) {
      const bytes = spans.reduce((s, sp) => s + sp.length, 0);
      let b = this.pending.get(reader);
      if (b && b.length + bytes > this.scanLimit()) {
        ready.push(b);
        b = undefined;
      }
      b ??= { kind: 'scan', reader, spans: [], length: 0 };
      this.pending.set(reader, b);
      take(b, spans);
    }
    return ready;
  }

  /** The batches not yet sent (at the end of the source). */
  rest(): HostBatch[] {
    const out = [...this.pending.values()];
    this.pending.clear();
    return out;
  }
}
