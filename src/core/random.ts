/**
 * Random identifiers for new images (VHD, VDI and VHDX ids). The bytes come
 * from /dev/urandom where there is one: node:crypto and Web Crypto load
 * OpenSSL's bindings on first use, 3-8 ms of a short create or convert.
 */
import { closeSync, openSync, readSync } from 'node:fs';

export function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  try {
    const fd = openSync('/dev/urandom', 'r');
    try {
      for (let done = 0; done < n; ) {
        const got = readSync(fd, out, done, n - done, null);
        if (got <= 0) throw new Error('short read');
        done += got;
      }
    } finally {
      closeSync(fd);
    }
  } catch {
    globalThis.crypto.getRandomValues(out);
  }
  return out;
}

/**
 * A random (version 4) UUID's 16 bytes: in RFC 4122 order (`'rfc'`, VHD), or
 * in a Microsoft GUID's (`'guid'`, VDI and VHDX: the first three fields
 * little-endian, so the version sits in byte 7).
 */
export function newUuid(order: 'rfc' | 'guid'): Uint8Array {
  const u = randomBytes(16);
  const v = order === 'rfc' ? 6 : 7;
  u[v] = (u[v] & 0x0f) | 0x40;
  u[8] = (u[8] & 0x3f) | 0x80; // the variant
  return u;
}
