/** A Storage over bytes that fails reads touching chosen ranges (EIO), and counts reads. */
import { PlatterError } from '../../src/core/errors.js';
import type { Storage } from '../../src/core/storage.js';

export interface FaultyStorage extends Storage {
  reads: number;
  /** Reads that touched a bad range. */
  badReads: number;
  bad: Array<[number, number]>;
}

export function faultyStorage(
  data: Uint8Array,
  bad: Array<[number, number]>,
  name = 'faulty',
): FaultyStorage {
  const s: FaultyStorage = {
    name,
    readOnly: true,
    reads: 0,
    badReads: 0,
    bad,
    async size() {
      return data.length;
    },
    async read(buf, offset) {
      s.reads++;
      const end = offset + buf.length;
      if (end > data.length) throw new PlatterError('EIO', `${name}: read past end`);
      if (s.bad.some(([a, len]) => offset < a + len && a < end)) {
        s.badReads++;
        throw new PlatterError('EIO', `${name}: input/output error at ${offset}`);
      }
      buf.set(data.subarray(offset, end));
    },
    async write() {
      throw new PlatterError('EREADONLY', `${name}: read-only`);
    },
    async truncate() {
      throw new PlatterError('EREADONLY', `${name}: read-only`);
    },
    async flush() {},
    async close() {},
  };
  return s;
}
