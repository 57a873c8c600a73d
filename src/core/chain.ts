/**
 * stack(top, below): a backing chain. Reads of `hole` extents in `top` come from
 * `below` (past below's end: zeros); extents report the depth they came from.
 *
 * Copy-on-write: a write that covers only part of a granule (top.granularity)
 * which is a hole in `top` first fills the rest of that granule from `below`,
 * so the driver is always handed whole granules for new allocations. Partial
 * writes are serialised so that two of them in one hole granule cannot both
 * copy the old content over each other.
 */
import { type Disk, type Extent, type HostSpan, type HostSpanPurpose, pushExtent, toDisk } from './disk.js';
import { Mutex } from './mutex.js';

export function stack(top: Disk, below: Disk): Disk {
  const g = top.granularity;
  const cowLock = new Mutex();
  const belowIsZero = below.layers.length === 0;

  async function readBelow(buf: Uint8Array, offset: number): Promise<void> {
    const avail = Math.max(0, Math.min(buf.length, below.size - offset));
    if (avail > 0) await below.read(buf.subarray(0, avail), offset);
    buf.fill(0, avail);
  }

  async function read(buf: Uint8Array, offset: number): Promise<void> {
    const exts = await top.extents(offset, buf.length);
    if (exts.length === 1 && exts[0].status === 'data') return top.read(buf, offset);
    await Promise.all(
      exts.map((e) => {
        const sub = buf.subarray(e.offset - offset, e.offset - offset + e.length);
        switch (e.status) {
          case 'data':
            return top.read(sub, e.offset);
          case 'zero':
            sub.fill(0);
            return Promise.resolve();
          case 'hole':
            return readBelow(sub, e.offset);
          default: {
            const never: never = e.status;
            throw new Error(`internal error: status ${never}`);
          }
        }
      }),
    );
  }

  async function extents(offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    for (const e of await top.extents(offset, length)) {
      if (e.status !== 'hole') {
        pushExtent(out, e);
        continue;
      }
      const end = e.offset + e.length;
      const inBelow = Math.max(0, Math.min(end, below.size) - e.offset);
      if (inBelow > 0) {
        for (const b of await below.extents(e.offset, inBelow)) pushExtent(out, { ...b, depth: b.depth + 1 });
      }
      // Past the end of the disk below nothing lies under this layer: zeros of its own
      // depth (as qemu-img map reports them), not of the layer that ends before.
      if (inBelow < e.length) {
        pushExtent(out, { offset: e.offset + inBelow, length: e.length - inBelow, status: 'hole', depth: 0 });
      }
    }
    return out;
  }

  /** Reads: each extent from the layer that holds it (zeros are kept nowhere). */
  async function hostSpans(
    offset: number,
    length: number,
    purpose: HostSpanPurpose,
  ): Promise<HostSpan[] | null> {
    // Writes land in top; with a backing disk below, only whole granules (allocate) leave nothing to show through.
    if (purpose === 'write') return belowIsZero ? top.hostSpans(offset, length, purpose) : null;
    if (purpose === 'allocate') return top.hostSpans(offset, length, purpose);
    // Bytes top keeps verbatim are top's, whatever lies below: one question to
    // top (a raw file answers without looking) before the walk over its extents.
    const own = await top.hostSpans(offset, length, purpose);
    if (own) return own;
    const out: HostSpan[] = [];
    for (const e of await top.extents(offset, length)) {
      const end = e.offset + e.length;
      const spans =
        e.status === 'data'
          ? await top.hostSpans(e.offset, e.length, purpose)
          : e.status === 'hole' && end <= below.size
            ? await below.hostSpans(e.offset, e.length, purpose)
            : null;
      if (!spans) return null;
      out.push(...spans);
    }
    return out;
  }

  /** Does [a, b) of top contain a hole? */
  async function hasHole(a: number, b: number): Promise<boolean> {
    return (await top.extents(a, b - a)).some((e) => e.status === 'hole');
  }

  async function write(buf: Uint8Array, offset: number): Promise<void> {
    const end = offset + buf.length;
    const a = Math.floor(offset / g) * g;
    const b = Math.min(Math.ceil(end / g) * g, top.size);
    if (a === offset && b === end) return top.write(buf, offset);
    await cowLock.run(async () => {
      const headEnd = Math.min(a + g, b);
      const tailStart = Math.floor((b - 1) / g) * g;
      const headCow = a < offset && (await hasHole(a, headEnd));
      const tailCow = end < b && (await hasHole(tailStart, b));
      if (!headCow && !tailCow) return top.write(buf, offset);
      const from = headCow ? a : offset;
      const to = tailCow ? b : end;
      const whole = new Uint8Array(to - from);
      if (headCow) await fillFromChain(whole.subarray(0, headEnd - a), a);
      if (tailCow && (!headCow || tailStart >= headEnd)) {
        await fillFromChain(whole.subarray(tailStart - from), tailStart);
      }
      whole.set(buf, offset - from);
      await top.write(whole, from);
    });
  }

  async function fillFromChain(buf: Uint8Array, offset: number): Promise<void> {
    if (belowIsZero) {
      // Only the data/zero parts of top can differ from zero.
      buf.fill(0);
      for (const e of await top.extents(offset, buf.length)) {
        if (e.status === 'data')
          await top.read(buf.subarray(e.offset - offset, e.offset - offset + e.length), e.offset);
      }
      return;
    }
    await read(buf, offset);
  }

  async function writeZeroes(offset: number, length: number, opts: { mayUnmap: boolean }): Promise<void> {
    const end = offset + length;
    const a = Math.ceil(offset / g) * g;
    const b = Math.max(a, Math.floor(end / g) * g);
    const zeroEdge = async (from: number, to: number): Promise<void> => {
      if (to > from) await write(new Uint8Array(to - from), from);
    };
    if (a >= end || b <= offset) return zeroEdge(offset, end);
    await zeroEdge(offset, a);
    if (b > a) await top.writeZeroes(a, b - a, opts);
    await zeroEdge(b, end);
  }

  const layers = [...top.layers, ...below.layers];
  return toDisk(
    {
      size: top.size,
      granularity: g,
      storages: top.storages,
      features: top.features,
      read,
      write,
      writeZeroes,
      discard: (offset, length) => top.discard(offset, length),
      extents,
      hostSpans,
      flush: () => top.flush(),
      async close() {
        try {
          await top.close();
        } finally {
          await below.close();
        }
      },
      info: () => top.info(),
    },
    { name: top.name, readOnly: top.readOnly, layers },
  );
}
