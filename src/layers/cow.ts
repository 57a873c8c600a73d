/**
 * cow(size): a copy-on-write overlay to put in front of a Disk with
 * `stack(toDisk(cow(...)), disk)` — the `serve --snapshot` layer. Writes land
 * here; the disk below is only read. The overlay lives in memory (a Map of
 * granules) or in a scratch Storage (a temporary file: slots appended in
 * allocation order, never reused; the file is thrown away on close).
 *
 *   granule state | extents() | read
 *   --------------|-----------|-----------------------------
 *   absent        | hole      | zeros here (the chain reads below)
 *   zero          | zero      | zeros (writeZeroes, discard)
 *   slot n        | data      | the granule's bytes in the store
 *
 * stack() widens a partial write into a hole granule to the whole granule
 * (filled from below), so a new slot normally receives whole granules; a
 * partial first write still gets a zero-filled slot (robustness).
 */
import { blockPieces } from '../core/blocks.js';
import type { DiskImpl, Extent } from '../core/disk.js';
import type { Storage } from '../core/storage.js';

export const COW_GRANULE = 64 * 1024;

const ZERO = -1;

interface Store {
  read(slot: number, buf: Uint8Array, within: number): Promise<void>;
  write(slot: number, buf: Uint8Array, within: number): Promise<void>;
  /** A new slot; all zeros unless `whole` (the first write covers all of it). */
  allocate(whole: boolean): number;
  free(slot: number): void;
  close(): Promise<void>;
}

function memoryStore(g: number): Store {
  const slots = new Map<number, Uint8Array>();
  let next = 0;
  return {
    async read(slot, buf, within) {
      buf.set(slots.get(slot)!.subarray(within, within + buf.length));
    },
    async write(slot, buf, within) {
      slots.get(slot)!.set(buf, within);
    },
    allocate() {
      slots.set(next, new Uint8Array(g));
      return next++;
    },
    free(slot) {
      slots.delete(slot);
    },
    async close() {
      slots.clear();
    },
  };
}

function storageStore(storage: Storage, g: number): Store {
  let next = 0;
  // Zero-filling of new slots still under way: later I/O on the slot waits for it.
  const init = new Map<number, Promise<void>>();
  const ready = async (slot: number): Promise<void> => {
    const p = init.get(slot);
    if (p) await p;
  };
  return {
    async read(slot, buf, within) {
      await ready(slot);
      await storage.read(buf, slot * g + within);
    },
    async write(slot, buf, within) {
      await ready(slot);
      await storage.write(buf, slot * g + within);
    },
    allocate(whole) {
      const slot = next++;
      if (!whole) {
        const p = storage.write(new Uint8Array(g), slot * g).finally(() => init.delete(slot));
        init.set(slot, p);
      }
      return slot;
    },
    free() {},
    close: () => storage.close(),
  };
}

export interface CowOptions {
  /** Scratch store for the overlay (a temporary file); memory when absent. Closed with the overlay. */
  storage?: Storage;
  granularity?: number;
}

export function cow(size: number, opts: CowOptions = {}): DiskImpl {
  const g = opts.granularity ?? COW_GRANULE;
  const store = opts.storage ? storageStore(opts.storage, g) : memoryStore(g);
  const map = new Map<number, number>();

  /** Calls fn for each granule piece of [offset, offset+length). */
  const pieces = async (
    offset: number,
    length: number,
    fn: (granule: number, within: number, at: number, n: number) => Promise<void> | void,
  ): Promise<void> => {
    const jobs: Array<Promise<void> | void> = [];
    for (const p of blockPieces(offset, length, g)) jobs.push(fn(p.block, p.within, p.at, p.length));
    await Promise.all(jobs);
  };

  return {
    size,
    granularity: g,
    async read(buf, offset) {
      await pieces(offset, buf.length, (granule, within, at, n) => {
        const slot = map.get(granule);
        const sub = buf.subarray(at, at + n);
        if (slot === undefined || slot === ZERO) sub.fill(0);
        else return store.read(slot, sub, within);
      });
    },
    async write(buf, offset) {
      await pieces(offset, buf.length, async (granule, within, at, n) => {
        let slot = map.get(granule);
        if (slot === undefined || slot === ZERO) {
          // Allocated synchronously: concurrent writes into one new granule share the slot.
          slot = store.allocate(within === 0 && (n === g || granule * g + n === size));
          map.set(granule, slot);
        }
        await store.write(slot, buf.subarray(at, at + n), within);
      });
    },
    async writeZeroes(offset, length) {
      await pieces(offset, length, async (granule, within, _at, n) => {
        const slot = map.get(granule);
        const whole = within === 0 && (n === g || granule * g + n === size);
        if (whole || slot === undefined) {
          // stack() hands over whole granules only (it writes partial edges as
          // data), so marking the granule zero never hides bytes from below.
          if (slot !== undefined && slot !== ZERO) store.free(slot);
          map.set(granule, ZERO);
        } else if (slot !== ZERO) {
          await store.write(slot, new Uint8Array(n), within);
        }
      });
    },
    async extents(offset, length) {
      const out: Extent[] = [];
      await pieces(offset, length, (granule, _within, at, n) => {
        const slot = map.get(granule);
        const status = slot === undefined ? 'hole' : slot === ZERO ? 'zero' : 'data';
        const last = out[out.length - 1];
        if (last && last.status === status) last.length += n;
        else out.push({ offset: offset + at, length: n, status, depth: 0 });
      });
      return out;
    },
    async flush() {},
    async close() {
      map.clear();
      await store.close();
    },
    info: async () => ({ format: 'cow', granularity: g }),
  };
}
