/** Sizes, byte helpers and zero detection. Every size is in bytes (principle 12). */
import { corrupt, invalid } from './errors.js';

const SUFFIX: Record<string, number> = {
  '': 1,
  B: 1,
  K: 2 ** 10,
  M: 2 ** 20,
  G: 2 ** 30,
  T: 2 ** 40,
  P: 2 ** 50,
  E: 2 ** 60,
};

/** Parses "10G", "512", "1.5M", "64KiB" (powers of 1024). */
export function parseSize(text: string, what = 'size'): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMGTPE]?)(?:i?B)?\s*$/i.exec(text);
  if (!m) throw invalid(`invalid ${what} '${text}': use a number with an optional K, M, G, T or P suffix`);
  const n = Number(m[1]) * SUFFIX[m[2].toUpperCase()];
  if (!Number.isSafeInteger(n)) {
    throw invalid(`invalid ${what} '${text}': must be a whole number of bytes below 8 PiB`);
  }
  return n;
}

/** 1536 -> "1.5 KiB" */
export function formatSize(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB', 'PiB'];
  let i = 0;
  let v = n;
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i++;
  }
  return i === 0 ? `${n} B` : `${v.toFixed(v < 10 ? 2 : 1).replace(/\.?0+$/, '')} ${units[i]}`;
}

const ZEROS = new Uint8Array(1 << 20);

/** True if every byte of buf is zero (native memcmp against a zero page, 1 MiB at a time). */
export function isAllZero(buf: Uint8Array): boolean {
  for (let i = 0; i < buf.length; i += ZEROS.length) {
    const n = Math.min(ZEROS.length, buf.length - i);
    if (Buffer.compare(buf.subarray(i, i + n), ZEROS.subarray(0, n)) !== 0) return false;
  }
  return true;
}

export function alignDown(n: number, a: number): number {
  return n - (n % a);
}

export function alignUp(n: number, a: number): number {
  const r = n % a;
  return r === 0 ? n : n + (a - r);
}

/** Reads an unsigned 64-bit on-disk field; a value past 2^53 is a corrupt image. */
export function u64(view: DataView, at: number, littleEndian: boolean, field: string, file: string): number {
  const v = view.getBigUint64(at, littleEndian);
  if (v > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw corrupt(file, `${field} 0x${v.toString(16)} is too large`);
  }
  return Number(v);
}

export function viewOf(buf: Uint8Array): DataView {
  return new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
}
