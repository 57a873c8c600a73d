/**
 * ewf: Expert Witness Compression Format (E01), after libewf's EWF document.
 *
 * Reads EnCase 1-7, linen, FTK and the old "ewf"/SMART layouts (compressed and
 * uncompressed chunks, multi-segment sets .E01 .E02 ... .EAA ...), checking
 * every section, table, volume, hash/digest/error2 and chunk checksum.
 * Writes the EnCase 6 layout (what `ewfacquire -f encase6` writes); see
 * writer.ts. An E01 is written once, front to back:
 *
 *   create()        writes segment 1's headers and volume (a "prefix")
 *   open(write)     of a prefix-only file continues it: chunks are handed
 *                   to the sequential writer in order once every byte of
 *                   them was written
 *   close()         writes the remaining chunks (zeros), the tables, the
 *                   hashes and the done section
 *
 * A finished E01 is never modified: opening one for writing is refused.
 * Not supported: EWF2 (Ex01), logical evidence (L01), encrypted images.
 *
 * -o options for create: compression=none|fast|best, chunk_size (bytes),
 * bytes_per_sector, segment_size, case_number, evidence_number, examiner,
 * description, notes, model, serial_number, media_type=fixed|removable|optical|memory.
 */
import { parseSize } from '../../core/bytes.js';
import type { DiskImpl } from '../../core/disk.js';
import { invalid, unsupported } from '../../core/errors.js';
import { Mutex } from '../../core/mutex.js';
import type { Storage } from '../../core/storage.js';
import type { CreateContext, FormatDriver, OpenContext, OpenedImage } from '../driver.js';
import { adler32 } from './adler32.js';
import type { CaseMetadata } from './header.js';
import {
  DESCRIPTOR_SIZE,
  EVF_MAGIC,
  FILE_HEADER_SIZE,
  parseDescriptor,
  parseVolume,
  VOLUME_SIZE,
} from './layout.js';
import { baseName, isFirstSegmentName, segmentName } from './names.js';
import { openSet, setDisk } from './reader.js';
import { type Compression, createEwfWriter, type EwfWriteOptions, validateWriteOptions } from './writer.js';

export type { EwfWriteOptions, EwfWriter } from './writer.js';
export { createEwfWriter } from './writer.js';

async function probe(storage: Storage): Promise<number> {
  try {
    if ((await storage.size()) < 8) return 0;
    const b = new Uint8Array(8);
    await storage.read(b, 0);
    return EVF_MAGIC.every((x, i) => b[i] === x) ? 100 : 0;
  } catch {
    return 0;
  }
}

const META_KEYS: Record<string, keyof CaseMetadata> = {
  case_number: 'caseNumber',
  evidence_number: 'evidenceNumber',
  examiner: 'examiner',
  description: 'description',
  notes: 'notes',
  model: 'model',
  serial_number: 'serialNumber',
};

/** -o options -> writer options. */
export function writeOptionsFrom(options: Readonly<Record<string, string>>, size: number): EwfWriteOptions {
  const metadata: CaseMetadata = {};
  const o: EwfWriteOptions = { size, metadata };
  for (const [k, v] of Object.entries(options)) {
    if (META_KEYS[k]) metadata[META_KEYS[k]] = v;
    else if (k === 'compression') o.compression = v as Compression;
    else if (k === 'segment_size') o.segmentSize = parseSize(v, 'segment_size');
    else if (k === 'bytes_per_sector') o.bytesPerSector = parseSize(v, 'bytes_per_sector');
    else if (k === 'chunk_size') o.sectorsPerChunk = -1;
    else if (k === 'media_type') o.mediaType = v as EwfWriteOptions['mediaType'];
    else if (k === 'physical') o.physical = v !== 'off';
    else if (k === 'compress' || k === 'preallocation') continue;
    else
      throw invalid(
        `ewf: unknown option '${k}' (known: compression, chunk_size, segment_size, bytes_per_sector, ${Object.keys(META_KEYS).join(', ')}, media_type)`,
      );
  }
  if (o.sectorsPerChunk === -1) {
    const cs = parseSize(options.chunk_size, 'chunk_size');
    const bps = o.bytesPerSector ?? 512;
    if (cs % bps !== 0) throw invalid(`ewf: chunk_size ${cs} is not a multiple of the sector size ${bps}`);
    o.sectorsPerChunk = cs / bps;
  }
  return o;
}

/**
 * What create() knows that the E01 has no field for: the segment size and the
 * exact media size (the volume counts whole sectors). Keyed by path.
 */
const pendingCreate = new Map<string, { segmentSize: number; size: number }>();

async function create(ctx: CreateContext): Promise<void> {
  if (!isFirstSegmentName(ctx.storage.name)) {
    throw invalid(`${ctx.storage.name}: an EWF image's first file must end in .E01`);
  }
  const opts = writeOptionsFrom(ctx.options, ctx.size);
  const v = validateWriteOptions(opts);
  const w = await createEwfWriter(
    ctx.storage,
    async () => {
      throw new Error('internal error: ewf create() writes one segment');
    },
    { ...opts, compression: opts.compression ?? 'none' },
  );
  await w.flushBuffered();
  pendingCreate.set(ctx.storage.name, { segmentSize: v.segmentSize, size: ctx.size });
}

/** A first segment holding only headers and a volume section (left by create()). */
async function readPrefix(
  storage: Storage,
): Promise<{ end: number; volumeAt: number; volume: Uint8Array } | undefined> {
  const size = await storage.size();
  let off = FILE_HEADER_SIZE;
  let vol: { at: number; bytes: Uint8Array } | undefined;
  while (off + DESCRIPTOR_SIZE <= size) {
    const b = new Uint8Array(DESCRIPTOR_SIZE);
    await storage.read(b, off);
    const d = parseDescriptor(storage.name, b, off);
    if (!['header', 'header2', 'volume'].includes(d.type)) return undefined;
    if (d.size < DESCRIPTOR_SIZE || d.next !== off + d.size || d.next > size) return undefined;
    if (d.type === 'volume') {
      if (d.size !== DESCRIPTOR_SIZE + VOLUME_SIZE) return undefined;
      const bytes = new Uint8Array(VOLUME_SIZE);
      await storage.read(bytes, off + DESCRIPTOR_SIZE);
      vol = { at: off + DESCRIPTOR_SIZE, bytes };
    }
    off = d.next;
  }
  if (!vol || off !== size) return undefined;
  return { end: off, volumeAt: vol.at, volume: vol.bytes };
}

async function openForWrite(storage: Storage, ctx: OpenContext): Promise<OpenedImage> {
  const prefix = await readPrefix(storage);
  if (!prefix) {
    throw unsupported(
      `${storage.name}: an EWF image is written once; platter does not modify an existing E01 (open it read-only)`,
    );
  }
  const vol = parseVolume(storage.name, prefix.volume, 'volume section');
  const LEVELS: Compression[] = ['none', 'fast', 'best'];
  let compression = LEVELS[vol.compressionLevel ?? 0] ?? 'none';
  if (ctx.options.compress === 'on' && compression === 'none') {
    compression = 'fast';
    prefix.volume[52] = 1;
    new DataView(prefix.volume.buffer).setUint32(1048, adler32(prefix.volume.subarray(0, 1048)), true);
    await storage.write(prefix.volume, prefix.volumeAt);
  }
  const size = vol.sectorCount * vol.bytesPerSector;
  const pending = pendingCreate.get(storage.name);
  const created: Storage[] = [];
  const writer = await createEwfWriter(
    storage,
    async (n) => {
      const s = await ctx.host.create(
        ctx.host.resolve(storage.name, baseName(segmentName(storage.name, n))),
        {},
      );
      created.push(s);
      return s;
    },
    {
      size,
      bytesPerSector: vol.bytesPerSector,
      sectorsPerChunk: vol.sectorsPerChunk,
      compression,
      segmentSize: pending?.segmentSize,
      resume: { prefixEnd: prefix.end, volume: prefix.volume },
      hashes: 'compute',
    },
  );
  pendingCreate.delete(storage.name);
  return { disk: writeDisk(storage.name, size, writer, created, pending?.size === size) };
}

/** Adds [a, b) to a sorted list of disjoint ranges; returns the bytes covered. */
function cover(ranges: Array<[number, number]>, a: number, b: number): number {
  ranges.push([a, b]);
  ranges.sort((x, y) => x[0] - y[0]);
  let w = 0;
  for (const r of ranges) {
    if (w > 0 && r[0] <= ranges[w - 1][1]) ranges[w - 1][1] = Math.max(ranges[w - 1][1], r[1]);
    else ranges[w++] = [r[0], r[1]];
  }
  ranges.length = w;
  return ranges.reduce((n, r) => n + r[1] - r[0], 0);
}

/**
 * The DiskImpl of an E01 being written. Chunks are collected until every byte
 * of them was written, then handed to the sequential writer in order. Bytes
 * never written read as zeros: when the chunk at the front stays incomplete
 * while too much is buffered behind it, it is emitted with zeros (a later
 * write into it is refused). Everything reports `data`, so the chain passes
 * writes through unchanged.
 */
function writeDisk(
  name: string,
  size: number,
  writer: Awaited<ReturnType<typeof createEwfWriter>>,
  created: Storage[],
  exactSize: boolean,
): DiskImpl {
  const cs = writer.chunkSize;
  const chunks = Math.ceil(size / cs);
  const maxPending = Math.max(8, Math.floor((256 << 20) / cs));
  const pending = new Map<number, { buf: Uint8Array; ranges: Array<[number, number]>; filled: number }>();
  const unreadable: Array<{ offset: number; length: number }> = [];
  let next = 0;
  let supplied: (() => { md5: string; sha1?: string }) | undefined;
  let started = false;
  const lock = new Mutex();
  const lenOf = (i: number): number => Math.min(cs, size - i * cs);

  async function drain(): Promise<void> {
    for (;;) {
      let p = pending.get(next);
      if (!p || p.filled < p.buf.length) {
        if (pending.size <= maxPending) return;
        p = p ?? { buf: new Uint8Array(lenOf(next)), ranges: [], filled: 0 };
      }
      pending.delete(next);
      next++;
      await writer.write(p.buf);
    }
  }

  async function put(data: Uint8Array | null, offset: number, length: number): Promise<void> {
    started = true;
    let pos = offset;
    // In order and nothing buffered: whole chunks go straight to the writer (it copies).
    if (data && pending.size === 0 && offset === next * cs) {
      const full = Math.floor(Math.min(length, size - offset) / cs);
      if (full > 0) {
        next += full;
        pos += full * cs;
        await writer.write(data.subarray(0, full * cs));
      }
    }
    for (; pos < offset + length; ) {
      const i = Math.floor(pos / cs);
      const within = pos - i * cs;
      const n = Math.min(lenOf(i) - within, offset + length - pos);
      if (i < next) {
        throw unsupported(
          `${name}: offset ${pos} was already written; an EWF image is written once, front to back`,
        );
      }
      let p = pending.get(i);
      if (!p) {
        p = { buf: new Uint8Array(lenOf(i)), ranges: [], filled: 0 };
        pending.set(i, p);
      }
      if (data) p.buf.set(data.subarray(pos - offset, pos - offset + n), within);
      else p.buf.fill(0, within, within + n);
      p.filled = n === p.buf.length ? n : cover(p.ranges, within, within + n);
      pos += n;
    }
    await drain();
  }

  return {
    size,
    granularity: cs,
    storages: [],
    async read(buf, offset) {
      for (let pos = offset; pos < offset + buf.length; ) {
        const i = Math.floor(pos / cs);
        const within = pos - i * cs;
        const n = Math.min(lenOf(i) - within, offset + buf.length - pos);
        if (i < next) throw unsupported(`${name}: an EWF image cannot be read back until it is closed`);
        const p = pending.get(i);
        if (p) buf.set(p.buf.subarray(within, within + n), pos - offset);
        else buf.fill(0, pos - offset, pos - offset + n);
        pos += n;
      }
    },
    // The writer takes bytes strictly in order: one put at a time.
    write: (buf, offset) => lock.run(() => put(buf, offset, buf.length)),
    writeZeroes: (offset, length) => lock.run(() => put(null, offset, length)),
    features: {
      evidence: {
        recordUnreadable(ranges) {
          unreadable.push(...ranges);
        },
        supplyHashes(get) {
          if (started || !exactSize) return false;
          supplied = get;
          writer.expectHashes();
          return true;
        },
      },
    },
    close: () =>
      lock.run(async () => {
        try {
          for (let i = next; i < chunks; i++) {
            const p = pending.get(i);
            if (p) pending.delete(i);
            await writer.write(p ? p.buf : new Uint8Array(lenOf(i)));
          }
          next = chunks;
          writer.addErrors(unreadable);
          const h = supplied?.();
          if (h && !/^[0-9a-f]{32}$/.test(h.md5))
            throw new Error('internal error: supplied MD5 is not 32 hex digits');
          await writer.finish(
            h
              ? { md5: Buffer.from(h.md5, 'hex'), ...(h.sha1 ? { sha1: Buffer.from(h.sha1, 'hex') } : {}) }
              : undefined,
          );
        } finally {
          await writer.abort().catch(() => undefined);
          for (const s of created) await s.close().catch(() => undefined);
        }
      }),
    async info() {
      return {
        format: 'ewf',
        subformat: 'encase6',
        granularity: cs,
        details: { segmentFiles: [...writer.files] },
      };
    },
  };
}

async function open(storage: Storage, ctx: OpenContext): Promise<OpenedImage> {
  if (!ctx.readOnly) return openForWrite(storage, ctx);
  const set = await openSet(storage, ctx);
  return { disk: setDisk(set) };
}

export const ewf: FormatDriver = {
  name: 'ewf',
  probe,
  open,
  create,
  capabilities: { create: true, write: true, backing: false, compression: true, snapshots: false },
};
