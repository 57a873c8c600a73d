/**
 * A block that an image maps whole may still hold holes in its host file
 * (never written since the block was placed): they read as zeros, and saying
 * so lets copies skip them instead of reading and scanning zeros.
 */
import type { Status } from './disk.js';
import { eachZeroPiece, type Storage } from './storage.js';

/**
 * [at, at+length) of `storage` as runs of `data` and `zero` (its holes), with
 * offsets relative to `at`; all data when the store cannot tell.
 */
export async function hostRuns(
  storage: Storage,
  at: number,
  length: number,
): Promise<Array<{ offset: number; length: number; status: Extract<Status, 'data' | 'zero'> }>> {
  if (!storage.extents) return [{ offset: 0, length, status: 'data' }];
  const out: Array<{ offset: number; length: number; status: 'data' | 'zero' }> = [];
  let p = 0;
  for (const e of await storage.extents(at, length)) {
    const len = Math.min(e.offset + e.length, at + length) - Math.max(e.offset, at);
    if (len <= 0) continue;
    out.push({ offset: p, length: len, status: e.kind === 'hole' ? 'zero' : 'data' });
    p += len;
  }
  if (p < length) out.push({ offset: p, length: length - p, status: 'data' });
  return out;
}

/**
 * Makes [at, at+length) of `storage` read zeros where it holds data: its holes
 * (a block placed and never written there) read zeros already and are left
 * alone. `write(zeros, rel)` writes zeros `rel` bytes into the range (the
 * caller's way in: the store itself, or a format's own write path).
 */
export async function zeroHostData(
  storage: Storage,
  at: number,
  length: number,
  write: (zeros: Uint8Array, rel: number) => Promise<void>,
): Promise<void> {
  for (const r of await hostRuns(storage, at, length)) {
    if (r.status === 'data') await eachZeroPiece(r.length, (zeros, p) => write(zeros, r.offset + p));
  }
}
