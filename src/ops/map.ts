/**
 * mapDisk(disk): the allocation map, in the shape of `qemu-img map --output=json`:
 *
 *   extent status | data  | zero  | present | depth
 *   --------------|-------|-------|---------|-----------------------------------
 *   data          | true  | false | true    | the layer holding it (0 = top)
 *   zero          | false | true  | true    | the layer that says "zeros"
 *   hole          | false | true  | false   | the bottom layer (nothing anywhere)
 *
 * Adjacent entries with equal flags and depth are merged, as qemu-img does.
 */
import type { Disk } from '../core/disk.js';
import { throwIfAborted } from '../core/errors.js';
import type { OpOptions } from './progress.js';

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
}

const WINDOW = 1 << 30;

export async function mapDisk(disk: Disk, opts: OpOptions = {}): Promise<MapEntry[]> {
  const out: MapEntry[] = [];
  const bottom = Math.max(0, disk.layers.length - 1);
  for (let win = 0; win < disk.size; win += WINDOW) {
    throwIfAborted(opts.signal);
    const len = Math.min(WINDOW, disk.size - win);
    for (const e of await disk.extents(win, len)) {
      let m: Omit<MapEntry, 'start' | 'length'>;
      switch (e.status) {
        case 'data':
          m = { depth: e.depth, present: true, zero: false, data: true };
          break;
        case 'zero':
          m = { depth: e.depth, present: true, zero: true, data: false };
          break;
        case 'hole':
          m = { depth: Math.min(e.depth, bottom), present: false, zero: true, data: false };
          break;
        default: {
          const never: never = e.status;
          throw new Error(`internal error: status ${never}`);
        }
      }
      const last = out[out.length - 1];
      if (
        last &&
        last.start + last.length === e.offset &&
        last.depth === m.depth &&
        last.present === m.present &&
        last.zero === m.zero &&
        last.data === m.data
      ) {
        last.length += e.length;
      } else {
        out.push({ start: e.offset, length: e.length, ...m });
      }
    }
    opts.onProgress?.({ phase: 'mapping', done: win + len, total: disk.size });
  }
  return out;
}
