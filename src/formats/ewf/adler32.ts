/**
 * Adler-32 (RFC 1950), the checksum of every EWF section descriptor, table,
 * volume, hash, digest and error2 block and of every uncompressed chunk.
 * Sums are reduced every 2000 bytes so both stay small integers (V8 keeps them
 * unboxed), which makes this run at memory speed rather than double speed.
 */
const MOD = 65521;
const BLOCK = 2000;

export function adler32(buf: Uint8Array, prev = 1): number {
  let a = prev & 0xffff;
  let b = prev >>> 16;
  const n = buf.length;
  let i = 0;
  while (i < n) {
    const end = Math.min(i + BLOCK, n);
    for (; i < end; i++) {
      a += buf[i];
      b += a;
    }
    a %= MOD;
    b %= MOD;
  }
  return ((b << 16) | a) >>> 0;
}
