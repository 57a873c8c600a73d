/**
 * Writing an E01 set sequentially, in the EnCase 6 layout that
 * `ewfacquire -f encase6` writes:
 *
 *   segment 1:  file header, header2, header2, header, volume,
 *               (sectors, table, table2)+, [data if single segment], next | trailer
 *   segment n:  file header, data, (sectors, table, table2)+, next | trailer
 *   trailer:    [error2], [digest], hash, done
 *
 * Table entries are offsets from the table's base (the sectors section's
 * descriptor), bit 31 set for a zlib chunk. A chunk is compressed on the
 * libuv thread pool (both cores); a chunk that does not shrink is stored
 * as is with its Adler-32, as the format allows. An all-zero chunk is
 * compressed once and reused. A sectors group is closed after 16375 chunks
 * or before its offsets would pass 2^31; a segment is closed before it would
 * pass the segment size. A media size that is not a multiple of the sector
 * size is padded with zeros to a whole sector (the format counts sectors).
 */
import { createHash, randomBytes } from 'node:crypto';
import { deflateSync } from 'node:zlib';
import { invalid, PlatterError } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import { adler32 } from './adler32.js';
import { type ChunkResult, createCompressPool } from './compress-pool.js';
import { type CaseMetadata, encodeHeader2, header2Text, headerText } from './header.js';
import {
  DESCRIPTOR_SIZE,
  descriptor,
  digestSection,
  error2Section,
  fileHeader,
  hashSection,
  MAX_CHUNK_SIZE,
  MAX_TABLE_ENTRIES,
  type SectorRange,
  table,
  volume,
} from './layout.js';

export type Compression = 'none' | 'fast' | 'best';
const LEVEL: Record<Compression, number> = { none: 0, fast: 1, best: 9 };
const VOLUME_LEVEL: Record<Compression, number> = { none: 0, fast: 1, best: 2 };

/** ewfacquire's default segment size (1.4 GiB). */
export const DEFAULT_SEGMENT_SIZE = Math.floor(1.4 * 2 ** 30);
export const MIN_SEGMENT_SIZE = 1 << 20;
const MAX_OFFSET = 0x7fffffff;
/** Batches in flight to the compression workers. */
const IN_FLIGHT = 4;
/** Bytes per batch (whole chunks). */
const BATCH_BYTES = 1 << 20;
const WRITE_BATCH = 1 << 20;
/** Bytes kept free at the end of a segment for the tables and the closing sections. */
const TRAILER_RESERVE = 16384;

export interface EwfWriteOptions {
  /** Media size in bytes (padded to whole sectors). */
  size: number;
  bytesPerSector?: number;
  sectorsPerChunk?: number;
  compression?: Compression;
  segmentSize?: number;
  metadata?: CaseMetadata;
  mediaType?: 'fixed' | 'removable' | 'optical' | 'memory';
  physical?: boolean;
  /** Acquisition time recorded in header/header2. */
  when?: Date;
  /**
   * 'compute': hash what is written (MD5 + SHA-1). 'given': the caller passes
   * the hashes to finish() (they must cover the padded media).
   */
  hashes?: 'compute' | 'given';
  /** The set identifier in the volume section (default: random). */
  guid?: Uint8Array;
  /**
   * Continue a set whose first segment already holds its headers and volume
   * (written by the driver's create()): writing starts at `prefixEnd`.
   */
  resume?: { prefixEnd: number; volume: Uint8Array };
}

export interface EwfWriteResult {
  files: string[];
  md5: string;
  sha1?: string;
  chunks: number;
  compressedChunks: number;
}

export interface EwfWriter {
  readonly chunkSize: number;
  readonly files: readonly string[];
  /** Appends media bytes (any length, in order). */
  write(data: Uint8Array): Promise<void>;
  /** Records unreadable ranges (bytes; rounded out to sectors) for the error2 section. */
  addErrors(ranges: ReadonlyArray<{ offset: number; length: number }>): void;
  finish(hashes?: { md5: Uint8Array; sha1?: Uint8Array }): Promise<EwfWriteResult>;
  /** Before the first write: the hashes will be given to finish(), do not compute them. */
  expectHashes(): void;
  /** Writes out what is buffered (create() uses it to leave the headers on disk). */
  flushBuffered(): Promise<void>;
  /** Stops and closes every file (the caller removes them). */
  abort(): Promise<void>;
}

const MEDIA: Record<string, number> = { removable: 0, fixed: 1, optical: 3, memory: 0x10 };

export function validateWriteOptions(
  o: EwfWriteOptions,
): Required<Omit<EwfWriteOptions, 'metadata' | 'when' | 'guid' | 'resume'>> {
  const bytesPerSector = o.bytesPerSector ?? 512;
  const sectorsPerChunk = o.sectorsPerChunk ?? 64;
  if (![512, 1024, 2048, 4096].includes(bytesPerSector))
    throw invalid(`ewf: bytes per sector ${bytesPerSector} (use 512, 1024, 2048 or 4096)`);
  if (sectorsPerChunk < 16 || sectorsPerChunk > 32768 || (sectorsPerChunk & (sectorsPerChunk - 1)) !== 0) {
    throw invalid(`ewf: sectors per chunk ${sectorsPerChunk} (use a power of two from 16 to 32768)`);
  }
  if (sectorsPerChunk * bytesPerSector > MAX_CHUNK_SIZE)
    throw invalid(`ewf: chunk of ${sectorsPerChunk * bytesPerSector} bytes is larger than ${MAX_CHUNK_SIZE}`);
  const segmentSize = o.segmentSize ?? DEFAULT_SEGMENT_SIZE;
  if (segmentSize < MIN_SEGMENT_SIZE)
    throw invalid(`ewf: segment size ${segmentSize} is below the minimum of 1 MiB`);
  const compression = o.compression ?? 'fast';
  if (!(compression in LEVEL)) throw invalid(`ewf: compression '${compression}' (use none, fast or best)`);
  if (!Number.isSafeInteger(o.size) || o.size < 0) throw invalid(`ewf: size ${o.size}`);
  const chunks = Math.ceil(o.size / (sectorsPerChunk * bytesPerSector));
  if (chunks > 0xffffffff)
    throw invalid(
      `ewf: ${chunks} chunks do not fit the volume section's 32-bit chunk count; use larger chunks`,
    );
  return {
    size: o.size,
    bytesPerSector,
    sectorsPerChunk,
    compression,
    segmentSize,
    mediaType: o.mediaType ?? 'fixed',
    physical: o.physical ?? true,
    hashes: o.hashes ?? 'compute',
  };
}

/**
 * Starts a new E01 set in `first` (an empty store named *.E01); later segments
 * come from `createSegment(n)`.
 */
export async function createEwfWriter(
  first: Storage,
  createSegment: (n: number) => Promise<Storage>,
  opts: EwfWriteOptions,
): Promise<EwfWriter> {
  const o = validateWriteOptions(opts);
  const chunkSize = o.sectorsPerChunk * o.bytesPerSector;
  const sectorCount = Math.ceil(o.size / o.bytesPerSector);
  const paddedSize = sectorCount * o.bytesPerSector;
  const chunkCount = Math.ceil(paddedSize / chunkSize);
  const when = opts.when ?? new Date();
  const level = LEVEL[o.compression];
  let md5 = o.hashes === 'compute' ? createHash('md5') : undefined;
  let sha1 = o.hashes === 'compute' ? createHash('sha1') : undefined;
  const vol =
    opts.resume?.volume ??
    volume({
      mediaType: MEDIA[o.mediaType] ?? 1,
      chunkCount,
      sectorsPerChunk: o.sectorsPerChunk,
      bytesPerSector: o.bytesPerSector,
      sectorCount,
      mediaFlags: 1 | (o.physical ? 2 : 0),
      compressionLevel: VOLUME_LEVEL[o.compression],
      errorGranularity: o.sectorsPerChunk,
      guid: opts.guid ?? randomBytes(16),
    });
  const zeroChunks = new Map<number, Uint8Array>();
  const storages: Storage[] = [first];
  const files: string[] = [first.name];
  const errors: SectorRange[] = [];

  let st = first;
  let segNo = 1;
  let pos = 0;
  let batch: Uint8Array[] = [];
  let batchStart = 0;
  let batchLen = 0;
  let group: { start: number; entries: number[] } | undefined;
  let compressedChunks = 0;
  let segChunks = 0;
  let emitted = 0;
  let received = 0;
  const batchBytes = Math.max(1, Math.floor(BATCH_BYTES / chunkSize)) * chunkSize;
  let cur = new Uint8Array(batchBytes);
  let curLen = 0;
  const queue: Array<Promise<ChunkResult[]>> = [];
  const pool = level > 0 ? createCompressPool() : undefined;
  let failed: unknown;

  async function flushBatch(): Promise<void> {
    if (batchLen === 0) return;
    const buf = batch.length === 1 ? batch[0] : Buffer.concat(batch, batchLen);
    batch = [];
    batchLen = 0;
    await st.write(buf, batchStart);
  }

  async function put(bytes: Uint8Array): Promise<void> {
    if (batchLen === 0) batchStart = pos;
    batch.push(bytes);
    batchLen += bytes.length;
    pos += bytes.length;
    if (batchLen >= WRITE_BATCH) await flushBatch();
  }

  async function patch(bytes: Uint8Array, at: number): Promise<void> {
    if (at >= batchStart && batchLen > 0) await flushBatch();
    await st.write(bytes, at);
  }

  async function section(type: string, body: Uint8Array): Promise<void> {
    const size = DESCRIPTOR_SIZE + body.length;
    await put(descriptor(type, pos + size, size));
    await put(body);
  }

  async function compressedSection(type: string, text: Uint8Array): Promise<void> {
    await section(type, deflateSync(text, { level: 9 }));
  }

  async function startSegment(): Promise<void> {
    segChunks = 0;
    if (segNo === 1 && opts.resume) {
      pos = opts.resume.prefixEnd;
      return;
    }
    pos = 0;
    await put(fileHeader(segNo));
    if (segNo === 1) {
      const meta = { softwareVersion: 'platter', operatingSystem: 'Linux', ...opts.metadata };
      const h2 = encodeHeader2(header2Text(meta, when));
      await compressedSection('header2', h2);
      await compressedSection('header2', h2);
      await compressedSection('header', Buffer.from(headerText(meta, when), 'latin1'));
      await section('volume', vol);
    } else {
      await section('data', vol);
    }
  }

  async function closeGroup(): Promise<void> {
    if (!group) return;
    const g = group;
    group = undefined;
    await patch(descriptor('sectors', pos, pos - g.start), g.start);
    const t = table(g.start, Uint32Array.from(g.entries));
    await section('table', t);
    await section('table2', t);
  }

  async function closeSegment(last: boolean): Promise<void> {
    await closeGroup();
    if (!last) {
      await put(descriptor('next', pos, 0));
      await flushBatch();
      await st.flush();
      segNo++;
      st = await createSegment(segNo);
      storages.push(st);
      files.push(st.name);
      await startSegment();
    }
  }

  async function store(data: Uint8Array, compressed: boolean): Promise<void> {
    const tableBytes = (n: number): number => 2 * (DESCRIPTOR_SIZE + 28 + 4 * n);
    if (
      group &&
      (group.entries.length >= MAX_TABLE_ENTRIES || pos + data.length - group.start > MAX_OFFSET)
    ) {
      await closeGroup();
    }
    const entries = group ? group.entries.length + 1 : 1;
    const groupOverhead = group ? 0 : DESCRIPTOR_SIZE;
    if (
      pos + groupOverhead + data.length + tableBytes(entries) + TRAILER_RESERVE > o.segmentSize &&
      segChunks > 0
    ) {
      await closeSegment(false);
    }
    if (!group) {
      group = { start: pos, entries: [] };
      await put(new Uint8Array(DESCRIPTOR_SIZE)); // patched in closeGroup()
    }
    group.entries.push(((pos - group.start) | (compressed ? 0x80000000 : 0)) >>> 0);
    if (compressed) compressedChunks++;
    segChunks++;
    await put(data);
  }

  function raw(chunk: Uint8Array): ChunkResult {
    const out = new Uint8Array(chunk.length + 4);
    out.set(chunk);
    new DataView(out.buffer).setUint32(chunk.length, adler32(chunk), true);
    return { kind: 'raw', data: out };
  }

  function zeroChunk(length: number): Uint8Array {
    let z = zeroChunks.get(length);
    if (!z) {
      z = deflateSync(new Uint8Array(length), { level: Math.max(1, level) });
      zeroChunks.set(length, z);
    }
    return z;
  }

  async function drain(limit: number): Promise<void> {
    while (queue.length > limit) {
      for (const r of await queue.shift()!) {
        const len = Math.min(chunkSize, paddedSize - emitted * chunkSize);
        if (r.kind === 'zero') await store(zeroChunk(len), true);
        else await store(r.data, r.kind === 'zlib');
        emitted++;
      }
    }
  }

  /** Sends the filled part of the current batch to be compressed (or checksummed). */
  async function dispatch(): Promise<void> {
    if (curLen === 0) return;
    const batch = cur.subarray(0, curLen);
    md5?.update(batch);
    sha1?.update(batch);
    let p: Promise<ChunkResult[]>;
    if (pool) {
      p = pool.compress(batch, chunkSize, level);
      cur = new Uint8Array(batchBytes);
    } else {
      const res: ChunkResult[] = [];
      for (let off = 0; off < batch.length; off += chunkSize)
        res.push(raw(batch.subarray(off, off + chunkSize)));
      p = Promise.resolve(res);
    }
    p.catch(() => undefined);
    curLen = 0;
    queue.push(p);
    await drain(IN_FLIGHT);
  }

  await startSegment();

  return {
    chunkSize,
    get files() {
      return files;
    },
    async write(data) {
      if (failed) throw failed;
      if (received + data.length > o.size)
        throw invalid(`ewf: writing ${data.length} bytes at ${received} passes the media size ${o.size}`);
      received += data.length;
      try {
        for (let i = 0; i < data.length; ) {
          const n = Math.min(batchBytes - curLen, data.length - i);
          cur.set(data.subarray(i, i + n), curLen);
          curLen += n;
          i += n;
          if (curLen === batchBytes) await dispatch();
        }
      } catch (e) {
        failed = e;
        throw e;
      }
    },
    addErrors(ranges) {
      for (const r of ranges) {
        const first = Math.floor(r.offset / o.bytesPerSector);
        const end = Math.ceil((r.offset + r.length) / o.bytesPerSector);
        if (end > first) errors.push({ firstSector: first, sectorCount: end - first });
      }
    },
    async finish(given) {
      if (failed) throw failed;
      if (received !== o.size)
        throw new PlatterError('EIO', `ewf: ${received} of ${o.size} bytes were written`);
      if (paddedSize > o.size) {
        cur.fill(0, curLen, curLen + paddedSize - o.size);
        curLen += paddedSize - o.size;
      }
      await dispatch();
      await drain(0);
      if (emitted !== chunkCount)
        throw new Error(`internal error: ewf writer emitted ${emitted} of ${chunkCount} chunks`);
      await closeGroup();
      if (segNo === 1) await section('data', vol);
      const m = given?.md5 ?? md5?.digest();
      const s1 = given ? given.sha1 : sha1?.digest();
      if (!m) throw new Error('internal error: ewf writer: no MD5 given');
      if (errors.length) {
        errors.sort((a, b) => a.firstSector - b.firstSector);
        await section('error2', error2Section(errors));
      }
      if (s1) await section('digest', digestSection(m, s1));
      await section('hash', hashSection(m));
      await put(descriptor('done', pos, 0));
      await flushBatch();
      for (const x of storages) await x.flush();
      return {
        files,
        md5: Buffer.from(m).toString('hex'),
        ...(s1 ? { sha1: Buffer.from(s1).toString('hex') } : {}),
        chunks: chunkCount,
        compressedChunks,
      };
    },
    flushBuffered: flushBatch,
    expectHashes() {
      if (received > 0) throw new Error('internal error: ewf writer: expectHashes() after writing');
      md5 = undefined;
      sha1 = undefined;
    },
    async abort() {
      failed = failed ?? new PlatterError('ECANCELED', 'ewf: writing was aborted');
      await Promise.allSettled(queue);
      await pool?.close();
      for (const x of storages) await x.close().catch(() => undefined);
    },
  };
}
