/**
 * Host copies for the copy engine: when both sides keep the data verbatim in
 * host stores (Disk.hostSpans) and the destination's store can copy from the
 * source's (Storage.copierFrom), data goes store to store without passing
 * through JavaScript memory, in batches of up to HOST_BATCH bytes.
 */
import type { Disk } from '../core/disk.js';
import type { CopySpan, SpanCopier, Storage } from '../core/storage.js';

const MiB = 1 << 20;

/**
 * Data bytes per host copy. With 32 MiB the main thread wakes once per batch
 * (some 5-15 ms of copying), so progress and cancellation still move; 4 and
 * 8 MiB batches were 5-25 % slower on the bench machine (BENCHMARKS.md).
 */
export const HOST_BATCH = 32 * MiB;

/** `length` data bytes in `spans`, for one copier. */
export interface HostBatch {
  copier: SpanCopier;
  spans: CopySpan[];
  length: number;
}

/**
 * The host copies for the data range [offset, offset+length), one list per
 * copier, or null when either side cannot say where the bytes are or the
 * destination's store cannot copy from the source's.
 */
export type HostPlanner = (offset: number, length: number) => Promise<Map<SpanCopier, CopySpan[]> | null>;

export function hostPlanner(src: Disk, dst: Disk): HostPlanner {
  const copiers = new Map<Storage, Map<Storage, SpanCopier | undefined>>();
  const copierOf = (from: Storage, to: Storage): SpanCopier | undefined => {
    const byDst = copiers.get(from) ?? new Map<Storage, SpanCopier | undefined>();
    copiers.set(from, byDst);
    if (!byDst.has(to)) byDst.set(to, to.copierFrom?.(from));
    return byDst.get(to);
  };
  return async (offset, length) => {
    const from = await src.hostSpans(offset, length, 'read');
    const to = from && (await dst.hostSpans(offset, length, 'write'));
    if (!from || !to) return null;
    const plan = new Map<SpanCopier, CopySpan[]>();
    // Both lists tile the range in order: walk them together.
    let i = 0;
    let j = 0;
    for (let pos = offset; pos < offset + length; ) {
      const a = from[i];
      const b = to[j];
      const n = Math.min(a.offset + a.length, b.offset + b.length) - pos;
      const copier = copierOf(a.storage, b.storage);
      if (!copier) return null;
      const spans = plan.get(copier) ?? [];
      plan.set(copier, spans);
      spans.push({ from: a.at + (pos - a.offset), to: b.at + (pos - b.offset), length: n });
      pos += n;
      if (pos === a.offset + a.length) i++;
      if (pos === b.offset + b.length) j++;
    }
    return plan;
  };
}

/** Gathers planned spans per copier into batches of at least HOST_BATCH bytes. */
export class HostBatcher {
  private readonly pending = new Map<SpanCopier, HostBatch>();

  /** Adds a plan; returns the batches it filled. */
  add(plan: Map<SpanCopier, CopySpan[]>): HostBatch[] {
    const full: HostBatch[] = [];
    for (const [copier, spans] of plan) {
      const b = this.pending.get(copier) ?? { copier, spans: [], length: 0 };
      this.pending.set(copier, b);
      for (const sp of spans) {
        b.spans.push(sp);
        b.length += sp.length;
      }
      if (b.length >= HOST_BATCH) {
        this.pending.delete(copier);
        full.push(b);
      }
    }
    return full;
  }

  /** The batches not yet full (at the end of the source). */
  rest(): HostBatch[] {
    const out = [...this.pending.values()];
    this.pending.clear();
    return out;
  }
}
