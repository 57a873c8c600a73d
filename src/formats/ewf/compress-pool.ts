/**
 * Chunk compression for the E01 writer on worker threads (one per core, at
 * most 2 by default), in batches, so that the calling thread only hashes and
 * writes. Per chunk a worker decides:
 *
 *   all zeros            -> 'zero' (the writer reuses one compressed zero chunk)
 *   a 4 KiB sample has
 *   near 8 bits/byte     -> stored as is + Adler-32 (random, encrypted or
 *                           compressed data: deflate would not shrink it)
 *   deflate shrinks it   -> zlib data
 *   otherwise            -> stored as is + Adler-32
 *
 * A batch travels as one transferred ArrayBuffer each way (no copies by
 * structured clone). Workers are unref'd: they never keep the process alive.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';

export type ChunkResult = { kind: 'zero' } | { kind: 'raw' | 'zlib'; data: Uint8Array };

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const zlib = require('node:zlib');
function adler32(buf) {
  let a = 1, b = 0;
  const n = buf.length;
  let i = 0;
  while (i < n) {
    const end = Math.min(i + 3800, n);
    for (; i + 4 <= end; i += 4) {
      a += buf[i]; b += a; a += buf[i + 1]; b += a; a += buf[i + 2]; b += a; a += buf[i + 3]; b += a;
    }
    for (; i < end; i++) { a += buf[i]; b += a; }
    a %= 65521; b %= 65521;
  }
  return ((b << 16) | a) >>> 0;
}
// Bits per byte of a 4 KiB sample: random or encrypted data is near 8 and does not deflate.
const hist = new Uint32Array(256);
function sampleEntropy(c) {
  hist.fill(0);
  const n = Math.min(4096, c.length);
  for (let i = 0; i < n; i++) hist[c[i]]++;
  let e = 0;
  for (let i = 0; i < 256; i++) if (hist[i]) { const p = hist[i] / n; e -= p * Math.log2(p); }
  return e;
}
const ZERO = new Uint8Array(1 << 16);
function isZero(c) {
  for (let i = 0; i < c.length; i += ZERO.length) {
    const n = Math.min(ZERO.length, c.length - i);
    if (Buffer.compare(c.subarray(i, i + n), ZERO.subarray(0, n)) !== 0) return false;
  }
  return true;
}
parentPort.on('message', (m) => {
  const input = new Uint8Array(m.buffer);
  const outs = [];
  const kinds = [];
  let total = 0;
  for (let off = 0; off < input.length; off += m.chunkSize) {
    const c = input.subarray(off, Math.min(input.length, off + m.chunkSize));
    let kind = 2, data;
    if (isZero(c)) { kind = 0; data = new Uint8Array(0); }
    else {
      let z;
      if (c.length < 16384 || sampleEntropy(c) < 7.5) z = zlib.deflateSync(c, { level: m.level });
      if (z && z.length < c.length) { kind = 1; data = z; }
      else {
        data = new Uint8Array(c.length + 4);
        data.set(c);
        new DataView(data.buffer).setUint32(c.length, adler32(c), true);
      }
    }
    kinds.push(kind);
    outs.push(data);
    total += data.length;
  }
  const out = new Uint8Array(total);
  const lens = new Uint32Array(outs.length);
  let at = 0;
  outs.forEach((d, i) => { out.set(d, at); at += d.length; lens[i] = d.length; });
  parentPort.postMessage({ id: m.id, out: out.buffer, lens, kinds }, [out.buffer]);
});
`;

interface Job {
  resolve: (r: ChunkResult[]) => void;
  reject: (e: unknown) => void;
}

export interface CompressPool {
  /** Compresses consecutive chunks of `chunkSize` bytes (the last may be shorter); takes ownership of `batch`. */
  compress(batch: Uint8Array, chunkSize: number, level: number): Promise<ChunkResult[]>;
  close(): Promise<void>;
}

export function createCompressPool(threads = Math.min(2, availableParallelism())): CompressPool {
  const workers: Array<{ w: Worker; busy: number }> = [];
  const jobs = new Map<number, Job>();
  let nextId = 0;
  let failed: unknown;

  const start = (): void => {
    for (let i = 0; i < Math.max(1, threads); i++) {
      const w = new Worker(WORKER_SOURCE, { eval: true });
      const slot = { w, busy: 0 };
      w.unref();
      w.on('message', (m: { id: number; out: ArrayBuffer; lens: Uint32Array; kinds: number[] }) => {
        slot.busy--;
        const job = jobs.get(m.id);
        jobs.delete(m.id);
        if (!job) return;
        const out = new Uint8Array(m.out);
        const res: ChunkResult[] = [];
        let at = 0;
        m.kinds.forEach((k, i) => {
          const n = m.lens[i];
          res.push(
            k === 0 ? { kind: 'zero' } : { kind: k === 1 ? 'zlib' : 'raw', data: out.subarray(at, at + n) },
          );
          at += n;
        });
        job.resolve(res);
      });
      w.on('error', (e) => {
        failed = e;
        for (const j of jobs.values()) j.reject(e);
        jobs.clear();
      });
      workers.push(slot);
    }
  };

  return {
    compress(batch, chunkSize, level) {
      if (failed) return Promise.reject(failed);
      if (workers.length === 0) start();
      const slot = workers.reduce((a, b) => (b.busy < a.busy ? b : a));
      slot.busy++;
      const id = nextId++;
      return new Promise((resolve, reject) => {
        jobs.set(id, { resolve, reject });
        const buffer =
          batch.byteOffset === 0 && batch.byteLength === batch.buffer.byteLength
            ? batch.buffer
            : batch.slice().buffer;
        slot.w.postMessage({ id, buffer, chunkSize, level }, [buffer as ArrayBuffer]);
      });
    },
    async close() {
      await Promise.all(workers.map((s) => s.w.terminate()));
      workers.length = 0;
    },
  };
}
