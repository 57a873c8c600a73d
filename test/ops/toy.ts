/**
 * A toy sparse disk for operation tests: granule-sized blocks in a Map, each
 * `data` (bytes stored) or `zero` (known zeros); absent blocks are holes. It
 * records every read so tests can prove that holes and zeros are never read.
 */
import { type Disk, type DiskImpl, type Extent, type Status, toDisk } from '../../src/core/disk.js';

export interface ToyDisk extends Disk {
  /** Bytes held as data blocks. */
  allocated(): number;
  /** [offset, length] of every read the disk served. */
  reads: Array<[number, number]>;
  /** Bytes passed to write(). */
  written(): number;
}

export function toyDisk(size: number, g = 4096, name = 'toy'): ToyDisk {
  const blocks = new Map<number, Uint8Array | 'zero'>();
  const reads: Array<[number, number]> = [];
  let written = 0;
  const each = (
    offset: number,
    len: number,
    fn: (b: number, within: number, n: number, i: number) => void,
  ): void => {
    for (let i = 0; i < len; ) {
      const b = Math.floor((offset + i) / g);
      const within = (offset + i) % g;
      const n = Math.min(g - within, len - i);
      fn(b, within, n, i);
      i += n;
    }
  };
  const impl: DiskImpl = {
    size,
    granularity: g,
    async read(buf, offset) {
      reads.push([offset, buf.length]);
      each(offset, buf.length, (b, within, n, i) => {
        const blk = blocks.get(b);
        if (blk instanceof Uint8Array) buf.set(blk.subarray(within, within + n), i);
        else buf.fill(0, i, i + n);
      });
    },
    async write(buf, offset) {
      written += buf.length;
      each(offset, buf.length, (b, within, n, i) => {
        let blk = blocks.get(b);
        if (!(blk instanceof Uint8Array)) {
          blk = new Uint8Array(Math.min(g, size - b * g));
          blocks.set(b, blk);
        }
        blk.set(buf.subarray(i, i + n), within);
      });
    },
    async writeZeroes(offset, length) {
      each(offset, length, (b, within, n) => {
        const blk = blocks.get(b);
        if (within === 0 && (n === g || b * g + n === size)) blocks.set(b, 'zero');
        else if (blk instanceof Uint8Array) blk.fill(0, within, within + n);
        else if (blk === undefined) {
          const nb = new Uint8Array(Math.min(g, size - b * g));
          blocks.set(b, nb);
        }
      });
    },
    async extents(offset, length) {
      const out: Extent[] = [];
      each(offset, length, (b, _w, n, i) => {
        const blk = blocks.get(b);
        const status: Status = blk === undefined ? 'hole' : blk === 'zero' ? 'zero' : 'data';
        out.push({ offset: offset + i, length: n, status, depth: 0 });
      });
      return out;
    },
  };
  const disk = toDisk(impl, { name, readOnly: false });
  return Object.assign(Object.create(null), disk, {
    reads,
    allocated: () => [...blocks.values()].reduce((s, b) => s + (b instanceof Uint8Array ? b.length : 0), 0),
    written: () => written,
  }) as ToyDisk;
}

/** A plain Disk over a byte array (every extent `data`), e.g. a thick raw destination. */
export function arrayDisk(bytes: Uint8Array, name = 'array'): Disk & { bytes: Uint8Array } {
  const d = toDisk(
    {
      size: bytes.length,
      async read(buf, offset) {
        buf.set(bytes.subarray(offset, offset + buf.length));
      },
      async write(buf, offset) {
        bytes.set(buf, offset);
      },
    },
    { name, readOnly: false },
  );
  return Object.assign(Object.create(null), d, { bytes });
}

export async function readAll(d: Disk): Promise<Uint8Array> {
  const b = new Uint8Array(d.size);
  await d.read(b, 0);
  return b;
}

/** Byte equality without a giant diff on failure: names the first differing offset. */
export function assertSameBytes(actual: Uint8Array, expected: Uint8Array, what = 'bytes'): void {
  if (actual.length !== expected.length)
    throw new Error(`${what}: length ${actual.length} != ${expected.length}`);
  if (Buffer.compare(actual, expected) === 0) return;
  let i = 0;
  while (actual[i] === expected[i]) i++;
  throw new Error(`${what}: first difference at offset ${i} (${actual[i]} != ${expected[i]})`);
}
