/**
 * Random identifiers for new images (VHD, VDI and VHDX ids). Web Crypto by
 * default; the command line installs a reader of /dev/urandom instead
 * (storage/fs-calls.ts, cli/common.ts), because Web Crypto and node:crypto load
 * OpenSSL's bindings on first use, 3-8 ms of a short create or convert.
 */
let fill: (buf: Uint8Array) => void = (buf) => {
  globalThis.crypto.getRandomValues(buf);
};

/** Where random bytes come from (a function that fills its buffer). */
export function setRandomSource(source: (buf: Uint8Array) => void): void {
  fill = source;
}

export function randomBytes(n: number): Uint8Array {
  const out = new Uint8Array(n);
  if (n > 0) fill(out);
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
