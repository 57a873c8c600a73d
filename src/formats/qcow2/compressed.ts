/**
 * Compressed clusters (qcow2.txt, "Compressed Clusters Descriptor").
 *
 * An L2 entry with bit 62 set holds, below bit 62, x = 62 - (cluster_bits - 8)
 * bits of host byte offset (not aligned) and above them the number of
 * additional 512-byte sectors the compressed data spans. The data is one
 * cluster compressed with raw deflate (zlib type, window 4 KiB as qemu writes
 * it) or one zstd frame; it may be followed by unrelated bytes up to the end
 * of its last sector, so decoding stops once a cluster is produced.
 *
 * Refcounts: every host cluster touched by [offset & ~511, +sectors*512) gets
 * +1 per compressed cluster stored in it; several compressed clusters share a
 * host cluster.
 *
 * Deflate for writing runs on worker threads, one per core, in batches; reads
 * inflate on libuv's thread pool (zlib's async API); zstd is a WebAssembly
 * build (@bokuweb/zstd-wasm, no native install step) on the calling thread.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import zlib from 'node:zlib';
import { compress as zstdCompress, decompress as zstdDecompress, init as zstdInit } from '@bokuweb/zstd-wasm';
import { corrupt } from '../../core/errors.js';
import { deflateRaw, inflateRaw } from '../../core/zlib.js';
import type { CompressionType } from './header.js';

let zstdReady: Promise<void> | undefined;
/** Loads the zstd WebAssembly module once. */
export function loadZstd(): Promise<void> {
  zstdReady ??= zstdInit();
  return zstdReady;
}

export interface CompressedRef {
  /** Host byte offset of the compressed data. */
  offset: number;
  /** Bytes from `offset` to the end of its last sector: an upper bound of the data. */
  length: number;
  /** [first, end) host byte range in whole sectors, for refcounts. */
  sectorStart: number;
  sectorEnd: number;
}

/**
 * Decodes a compressed descriptor given as the entry's high and low 32 bits
 * (bits 62 and 63 are ignored).
 */
export function decodeCompressed(hi: number, lo: number, clusterBits: number, file: string): CompressedRef {
  const x = 62 - (clusterBits - 8); // 41..61 offset bits
  const hiOffsetBits = x - 32;
  const hiOff = hi & (2 ** hiOffsetBits - 1);
  const offset = hiOff * 2 ** 32 + (lo >>> 0);
  if (!Number.isSafeInteger(offset) || offset >= 2 ** 56) {
    throw corrupt(file, `compressed cluster offset 0x${offset.toString(16)} is too large`);
  }
  const extra = Math.floor((hi & 0x3fffffff) / 2 ** hiOffsetBits);
  const sectorStart = offset - (offset % 512);
  const sectorEnd = sectorStart + (extra + 1) * 512;
  return { offset, length: sectorEnd - offset, sectorStart, sectorEnd };
}

/** Encodes a compressed descriptor (with bit 62 set) as [hi, lo]. */
export function encodeCompressed(offset: number, length: number, clusterBits: number): [number, number] {
  const x = 62 - (clusterBits - 8);
  const extra = Math.floor((offset + length - 1) / 512) - Math.floor(offset / 512);
  const hiOff = Math.floor(offset / 2 ** 32);
  const lo = offset % 2 ** 32;
  const hi = (0x40000000 | (extra * 2 ** (x - 32)) | hiOff) >>> 0;
  return [hi, lo];
}

/** Inflates one cluster; anything but exactly `clusterSize` bytes is a corrupt image. */
export async function decompressCluster(
  data: Uint8Array,
  clusterSize: number,
  type: CompressionType,
  file: string,
  where: number,
): Promise<Uint8Array> {
  let out: Uint8Array;
  try {
    if (type === 'zlib') {
      out = await inflateRaw(data, {
        windowBits: 15,
        chunkSize: Math.max(16384, clusterSize),
        maxOutputLength: clusterSize,
        finishFlush: zlib.constants.Z_SYNC_FLUSH,
      });
    } else {
      await loadZstd();
      out = zstdDecompress(data.subarray(0, zstdFrameLength(data)), { defaultHeapSize: clusterSize });
    }
  } catch (e) {
    throw corrupt(
      file,
      `compressed cluster at host offset 0x${where.toString(16)} does not decompress (${(e as Error).message})`,
    );
  }
  if (out.length !== clusterSize) {
    throw corrupt(
      file,
      `compressed cluster at host offset 0x${where.toString(16)} decompresses to ${out.length} bytes, not ${clusterSize}`,
    );
  }
  return out;
}

/** Compresses one cluster; undefined when that would not save space. */
export async function compressCluster(
  data: Uint8Array,
  type: CompressionType,
): Promise<Uint8Array | undefined> {
  let out: Uint8Array;
  if (type === 'zlib') {
    out = await deflateRaw(data, { ...DEFLATE, chunkSize: Math.max(16384, data.length + 1024) });
  } else {
    await loadZstd();
    out = zstdCompress(data, 3);
  }
  return out.length < data.length ? out : undefined;
}

/**
 * qemu's deflate parameters: raw stream, 4 KiB window, memLevel 9, default level
 * (-1, Z_DEFAULT_COMPRESSION: a literal, so that loading this file loads no zlib).
 */
const DEFLATE = { windowBits: 12, memLevel: 9, level: -1 };

/**
 * Compresses every cluster of `data` (a whole number of clusters). zlib
 * batches go to a small pool of worker threads (one per core) that deflate
 * synchronously, so the calling thread only moves bytes; zstd runs inline.
 */
export async function compressClusters(
  data: Uint8Array,
  clusterSize: number,
  type: CompressionType,
): Promise<Array<Uint8Array | undefined>> {
  const n = data.length / clusterSize;
  if (type === 'zstd' || n < 2) {
    const out: Array<Uint8Array | undefined> = [];
    for (let i = 0; i < n; i++)
      out.push(await compressCluster(data.subarray(i * clusterSize, (i + 1) * clusterSize), type));
    return out;
  }
  return deflatePool().run(data, clusterSize);
}

const WORKER_SOURCE = `
const { parentPort } = require('node:worker_threads');
const zlib = require('node:zlib');
parentPort.on('message', ({ id, data, cs, opts }) => {
  const outs = [];
  const transfer = [];
  for (let at = 0; at < data.length; at += cs) {
    const z = zlib.deflateRawSync(data.subarray(at, at + cs), opts);
    if (z.length < cs) {
      const copy = new Uint8Array(z);
      outs.push(copy);
      transfer.push(copy.buffer);
    } else outs.push(undefined);
  }
  parentPort.postMessage({ id, outs }, transfer);
});
`;

interface Pool {
  run(data: Uint8Array, cs: number): Promise<Array<Uint8Array | undefined>>;
}

let pool: Pool | undefined;

function deflatePool(): Pool {
  if (pool) return pool;
  const size = Math.max(1, Math.min(availableParallelism(), 8));
  const pending = new Map<
    number,
    { resolve: (v: Array<Uint8Array | undefined>) => void; reject: (e: Error) => void }
  >();
  const load: number[] = new Array(size).fill(0);
  let nextId = 0;
  const workers = Array.from({ length: size }, (_, w) => {
    const worker = new Worker(WORKER_SOURCE, { eval: true });
    worker.unref();
    // An unref() before the thread is online does not hold: repeat it then, if idle.
    worker.on('online', () => {
      if (load[w] === 0) worker.unref();
    });
    worker.on('message', (m: { id: number; outs: Array<Uint8Array | undefined> }) => {
      // Idle workers must not keep the process alive; busy ones must.
      if (--load[w] === 0) worker.unref();
      pending.get(m.id)?.resolve(m.outs);
      pending.delete(m.id);
    });
    worker.on('error', (e) => {
      for (const p of pending.values()) p.reject(e);
      pending.clear();
      pool = undefined;
    });
    return worker;
  });
  pool = {
    run(data, cs) {
      const id = nextId++;
      let w = 0;
      for (let k = 1; k < size; k++) if (load[k] < load[w]) w = k;
      if (load[w]++ === 0) workers[w].ref();
      return new Promise((resolve, reject) => {
        pending.set(id, { resolve, reject });
        // A copy travels to the worker: the caller's buffer stays theirs.
        workers[w].postMessage({ id, data: data.slice(), cs, opts: DEFLATE });
      });
    },
  };
  return pool;
}

/**
 * Length of the zstd frame at the start of `data` (the rest is unrelated
 * bytes of the host cluster), walking frame header and block headers
 * (RFC 8878 section 3.1.1). A malformed frame yields data.length, so the
 * decoder reports the error.
 */
export function zstdFrameLength(data: Uint8Array): number {
  if (data.length < 6 || data[0] !== 0x28 || data[1] !== 0xb5 || data[2] !== 0x2f || data[3] !== 0xfd) {
    return data.length;
  }
  const fhd = data[4];
  const fcsFlag = fhd >> 6;
  const single = (fhd >> 5) & 1;
  const checksum = (fhd >> 2) & 1;
  const dictFlag = fhd & 3;
  let at = 5 + (single ? 0 : 1) + [0, 1, 2, 4][dictFlag] + [single, 2, 4, 8][fcsFlag];
  for (;;) {
    if (at + 3 > data.length) return data.length;
    const bh = data[at] | (data[at + 1] << 8) | (data[at + 2] << 16);
    const last = bh & 1;
    const type = (bh >> 1) & 3;
    const size = bh >>> 3;
    at += 3 + (type === 1 ? 1 : type === 3 ? 0 : size);
    if (type === 3) return data.length;
    if (last) break;
  }
  at += checksum ? 4 : 0;
  return Math.min(at, data.length);
}
