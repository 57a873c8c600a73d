/**
 * A store as the format probes see it: its size and its first and last bytes
 * read once. Every driver's probe reads its own signature there (qcow2, VHDX,
 * EWF and VMDK at the start, VDI at byte 64, VHD at the start and the end, the
 * raw check both), one trip to the thread pool each, a dozen in all: ~2 ms of
 * a short command's start. Reads outside those bytes go to the store.
 */
import type { Storage } from '../core/storage.js';

/** How much of each end is read: every signature lies in the first 512 bytes or the last 512. */
const END = 4096;

export async function probeView(storage: Storage): Promise<Storage> {
  let size: number;
  let head: Uint8Array;
  let tail: Uint8Array;
  let tailAt: number;
  try {
    size = await storage.size();
    head = new Uint8Array(Math.min(size, END));
    tailAt = Math.max(head.length, size - END);
    tail = new Uint8Array(size - tailAt);
    await Promise.all([
      head.length > 0 ? storage.read(head, 0) : undefined,
      tail.length > 0 ? storage.read(tail, tailAt) : undefined,
    ]);
  } catch {
    return storage; // each probe meets the failure itself (and scores 0)
  }
  const from = (part: Uint8Array, at: number, buf: Uint8Array, offset: number): boolean => {
    if (offset < at || offset + buf.length > at + part.length) return false;
    buf.set(part.subarray(offset - at, offset - at + buf.length));
    return true;
  };
  return {
    name: storage.name,
    readOnly: true,
    size: async () => size,
    async read(buf, offset) {
      if (!from(head, 0, buf, offset) && !from(tail, tailAt, buf, offset)) await storage.read(buf, offset);
    },
    write: () => Promise.reject(new Error('internal error: a probe writes')),
    truncate: () => Promise.reject(new Error('internal error: a probe truncates')),
    flush: async () => undefined,
    close: async () => undefined,
  };
}
