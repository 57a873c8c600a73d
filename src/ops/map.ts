/**
 * mapDisk(disk): the allocation map, in the shape of `qemu-img map --output=json`:
 *
 *   extent status | data  | zero  | present | depth
 *   --------------|-------|-------|---------|-----------------------------------
 *   data          | true  | false | true    | the layer holding it (0 = top)
 *   zero          | false | true  | true    | the layer that says "zeros"
 *   hole          | false | true  | false   | the bottom layer (nothing anywhere)
 *
 * What a layer's file holds verbatim also says where: `offset`, its host
 * offset in that file (not for compressed or zero clusters), as qemu-img's.
 * Adjacent entries with equal flags and depth (and contiguous in the same
 * file) are merged, as qemu-img does.
 */
import type { Disk, Extent } from '../core/disk.js';
import { throwIfAborted } from '../core/errors.js';
import type { Storage } from '../core/storage.js';
import type { OpOptions } from './progress.js';

export interface MapEntry {
  start: number;
  length: number;
  depth: number;
  present: boolean;
  zero: boolean;
  data: boolean;
  /** Where the data lies in the layer's file. */
  offset?: number;
}

/** A map entry before merging, with the file its host offset is in. */
type Piece = Omit<MapEntry, 'start' | 'length'> & { start: number; length: number; file?: Storage };

/**
 * A present extent (data, or zeros a raw file holds) split where its bytes lie
 * in a layer's file; one piece without an offset where the layer reads none
 * (compressed clusters, zero clusters).
 */
async function presentPieces(disk: Disk, e: Extent): Promise<Piece[]> {
  const data = e.status === 'data';
  const flags = { depth: e.depth, present: true, zero: !data, data };
  const spans = await disk.layers[e.depth]?.hostSpans(e.offset, e.length, 'read');
  if (!spans) return [{ start: e.offset, length: e.length, ...flags }];
  return spans.map((h) => ({ start: h.offset, length: h.length, ...flags, offset: h.at, file: h.storage }));
}

const WINDOW = 1 << 30;

export async function mapDisk(disk: Disk, opts: OpOptions = {}): Promise<MapEntry[]> {
  const out: Piece[] = [];
  const bottom = Math.max(0, disk.layers.length - 1);
  for (let win = 0; win < disk.size; win += WINDOW) {
    throwIfAborted(opts.signal);
    const len = Math.min(WINDOW, disk.size - win);
    for (const e of await disk.extents(win, len)) {
      let pieces: Piece[];
      switch (e.status) {
        case 'data':
        case 'zero':
          pieces = await presentPieces(disk, e);
          break;
        case 'hole': {
          const depth = Math.min(e.depth, bottom);
          pieces = [{ start: e.offset, length: e.length, depth, present: false, zero: true, data: false }];
          break;
        }
        default: {
          const never: never = e.status;
          throw new Error(`internal error: status ${never}`);
        }
      }
      for (const m of pieces) {
        const last = out[out.length - 1];
        if (last && follows(last, m)) last.length += m.length;
        else out.push(m);
      }
    }
    opts.onProgress?.({ phase: 'mapping', done: win + len, total: disk.size });
  }
  return out.map(({ file: _file, ...entry }) => entry);
}

/** Does `m` continue `last`: adjacent, the same flags and depth, and (with an offset) right after it in the same file? */
function follows(last: Piece, m: Piece): boolean {
  return (
    last.start + last.length === m.start &&
    last.depth === m.depth &&
    last.present === m.present &&
    last.zero === m.zero &&
    last.data === m.data &&
    last.file === m.file &&
    (last.offset === undefined
      ? m.offset === undefined
      : m.offset !== undefined && last.offset + last.length === m.offset)
  );
}
