/**
 * zlib's one-shot calls as promises. Each looks zlib up when called, not when
 * this file loads, so opening an image loads no zlib until a compressed block is
 * met: the command-line bundle loads node:zlib lazily (scripts/build.mjs, LAZY),
 * and a `promisify(zlib.inflate)` at a module's top level would defeat that.
 */
import zlib from 'node:zlib';

type OneShot = (buf: Uint8Array, opts?: zlib.ZlibOptions) => Promise<Buffer>;

function promised(name: 'inflate' | 'inflateRaw' | 'deflate' | 'deflateRaw'): OneShot {
  return (buf, opts = {}) =>
    new Promise((resolve, reject) => {
      zlib[name](buf, opts, (err, out) => (err ? reject(err) : resolve(out)));
    });
}

export const inflate = promised('inflate');
export const inflateRaw = promised('inflateRaw');
export const deflate = promised('deflate');
export const deflateRaw = promised('deflateRaw');
