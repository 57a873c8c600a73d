/** A Storage in memory: tests, COW overlays, scratch space. Grows on write. */
import { PlatterError } from '../core/errors.js';
import type { Storage } from '../core/storage.js';

export function memoryStorage(
  name = 'memory',
  initial: Uint8Array = new Uint8Array(0),
): Storage & {
  bytes(): Uint8Array;
} {
  let data = new Uint8Array(initial);
  let size = initial.length;

  const ensure = (n: number): void => {
    if (n <= data.length) return;
    const next = new Uint8Array(Math.max(n, data.length * 2, 4096));
    next.set(data.subarray(0, size));
    data = next;
  };

  return {
    name,
    readOnly: false,
    bytes: () => data.subarray(0, size),
    async size() {
      return size;
    },
    async read(buf, offset) {
      if (offset + buf.length > size) {
        throw new PlatterError(
          'EIO',
          `${name}: read of ${buf.length} bytes at ${offset} is past the end (size ${size})`,
        );
      }
      buf.set(data.subarray(offset, offset + buf.length));
    },
    async write(buf, offset) {
      ensure(offset + buf.length);
      if (offset > size) data.fill(0, size, offset);
      data.set(buf, offset);
      size = Math.max(size, offset + buf.length);
    },
    async truncate(n) {
      ensure(n);
      if (n > size) data.fill(0, size, n);
      size = n;
    },
    async flush() {},
    async close() {},
  };
}
