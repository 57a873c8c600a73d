/**
 * Reading an EWF segment set: walk every section of every segment file
 * (.E01, .E02, ... following "next" until "done"), check every checksum,
 * build the chunk index from the table sections, and serve reads by
 * inflating (zlib, on the thread pool) or checksumming the chunks.
 *
 * Chunk index, per chunk: segment, file offset, stored length, compressed flag.
 * A chunk ends where the next table entry starts; the last chunk of a table
 * ends where the section holding it ends (the "sectors" section in EnCase
 * layouts, the table section itself in the old "ewf"/SMART layout).
 */
import type { DiskImpl, FormatInfo } from '../../core/disk.js';
import { corrupt, PlatterError, unsupported } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import { inflate } from '../../core/zlib.js';
import type { OpenContext } from '../driver.js';
import { adler32 } from './adler32.js';
import { type CaseMetadata, decodeHeaderText, parseHeaderText } from './header.js';
import {
  DESCRIPTOR_SIZE,
  type Descriptor,
  FILE_HEADER_SIZE,
  parseDescriptor,
  parseDigest,
  parseError2,
  parseFileHeader,
  parseHash,
  parseTable,
  parseVolume,
  TABLE_HEADER_SIZE,
  type Table,
  type Volume,
} from './layout.js';
import { baseName, segmentName } from './names.js';

/** Largest header/header2 section we inflate (EnCase limits each value to 3000 characters). */
const MAX_HEADER_BYTES = 16 << 20;
const MAX_SEGMENTS = 99 + 26 * 26 * 22;
const CACHE_CHUNKS = 64;
/** Entries in one table (EnCase 6 writes at most 65534; 2^24 bounds the allocation). */
const MAX_TABLE_COUNT = 1 << 24;
const PARALLEL = 16;

export interface EwfSet {
  files: string[];
  storages: Storage[];
  volume: Volume;
  chunkSize: number;
  size: number;
  metadata: CaseMetadata;
  hashes: { md5?: string; sha1?: string };
  /** Acquisition errors (error2), in bytes. */
  errors: Array<{ offset: number; length: number }>;
  subformat: string;
  chunkCount: number;
  compressedChunks: number;
  /** The bytes of chunk i (its length: chunkSize, or less for the last). */
  chunk(i: number): Promise<Uint8Array>;
}

interface Index {
  seg: Uint16Array;
  off: Float64Array;
  len: Uint32Array;
  comp: Uint8Array;
  n: number;
}

function grow(ix: Index): void {
  const cap = Math.max(1024, ix.seg.length * 2);
  const seg = new Uint16Array(cap);
  seg.set(ix.seg);
  const off = new Float64Array(cap);
  off.set(ix.off);
  const len = new Uint32Array(cap);
  len.set(ix.len);
  const comp = new Uint8Array(cap);
  comp.set(ix.comp);
  Object.assign(ix, { seg, off, len, comp });
}

async function readAt(st: Storage, offset: number, length: number): Promise<Uint8Array> {
  const b = new Uint8Array(length);
  await st.read(b, offset);
  return b;
}

async function inflateSection(file: string, st: Storage, d: Descriptor, what: string): Promise<Uint8Array> {
  const n = d.size - DESCRIPTOR_SIZE;
  if (n <= 0 || n > MAX_HEADER_BYTES)
    throw corrupt(file, `${what} at offset ${d.offset}: size ${d.size} is outside 77..${MAX_HEADER_BYTES}`);
  const raw = await readAt(st, d.offset + DESCRIPTOR_SIZE, n);
  try {
    return await inflate(raw, { maxOutputLength: MAX_HEADER_BYTES });
  } catch (e) {
    throw corrupt(
      file,
      `${what} at offset ${d.offset}: zlib data does not inflate (${(e as Error).message})`,
    );
  }
}

interface ScanState {
  volume?: Volume;
  chunkSize: number;
  metadata?: CaseMetadata;
  metadataFrom?: string;
  hashes: { md5?: string; sha1?: string };
  errors: Array<{ firstSector: number; sectorCount: number }>;
  ix: Index;
  header2: boolean;
  smart: boolean;
  tableBase: boolean;
  linen: boolean;
  sectionsBySeg: Descriptor[][];
}

/** Walks one segment file; returns whether the set continues ("next") or ends ("done"). */
async function scanSegment(file: string, st: Storage, segNo: number, s: ScanState): Promise<'next' | 'done'> {
  const fileSize = await st.size();
  if (fileSize < FILE_HEADER_SIZE)
    throw corrupt(file, `file of ${fileSize} bytes is too short for an EWF file header`);
  const got = parseFileHeader(file, await readAt(st, 0, FILE_HEADER_SIZE));
  if (got !== segNo) throw corrupt(file, `file header: segment number ${got}, expected ${segNo}`);
  const sections: Descriptor[] = [];
  s.sectionsBySeg.push(sections);
  let off = FILE_HEADER_SIZE;
  let sectorsArea: { start: number; end: number } | undefined;
  let tableError: PlatterError | undefined;
  for (;;) {
    if (off + DESCRIPTOR_SIZE > fileSize) {
      throw corrupt(
        file,
        `truncated segment: section descriptor at offset ${off} is past the end of the file (size ${fileSize}); no 'next' or 'done' section`,
      );
    }
    const d = parseDescriptor(file, await readAt(st, off, DESCRIPTOR_SIZE), off);
    sections.push(d);
    const terminal = d.type === 'next' || d.type === 'done';
    if (!terminal) {
      if (d.size !== 0 && d.size < DESCRIPTOR_SIZE) {
        throw corrupt(
          file,
          `section '${d.type}' at offset ${off}: size ${d.size} is smaller than its descriptor (76)`,
        );
      }
      const end = d.size !== 0 ? off + d.size : d.next;
      if (d.size !== 0 && d.next !== end) {
        throw corrupt(
          file,
          `section '${d.type}' at offset ${off}: next offset ${d.next} does not match its size ${d.size} (expected ${end})`,
        );
      }
      if (end <= off)
        throw corrupt(
          file,
          `section '${d.type}' at offset ${off}: next offset ${d.next} does not move forward`,
        );
      if (end > fileSize) {
        throw corrupt(
          file,
          `section '${d.type}' at offset ${off}: ends at ${end}, past the end of the file (size ${fileSize}); truncated segment?`,
        );
      }
      d.size = end - off;
    }
    if (tableError && d.type !== 'table2') throw tableError;
    switch (d.type) {
      case 'header2':
      case 'header': {
        if (segNo === 1 && (!s.metadata || (d.type === 'header2' && s.metadataFrom !== 'header2'))) {
          const text = decodeHeaderText(
            await inflateSection(file, st, d, `${d.type} section`),
            d.type === 'header2',
          );
          s.metadata = parseHeaderText(file, text, `${d.type} section at offset ${off}`);
          s.metadataFrom = d.type;
          if (d.type === 'header2') s.header2 = true;
          if (d.type === 'header' && /\nsrce\r?\n/.test(text)) s.linen = true;
        }
        break;
      }
      case 'volume':
      case 'disk':
      case 'data': {
        if (!s.volume) {
          const n = Math.min(d.size - DESCRIPTOR_SIZE, 1052);
          const v = parseVolume(
            file,
            await readAt(st, off + DESCRIPTOR_SIZE, n),
            `${d.type} section at offset ${off}`,
          );
          s.volume = v;
          s.chunkSize = v.sectorsPerChunk * v.bytesPerSector;
          if (v.layoutSize === 94) s.smart = true;
        }
        break;
      }
      case 'sectors':
        sectorsArea = { start: off + DESCRIPTOR_SIZE, end: off + d.size };
        break;
      case 'table':
      case 'table2': {
        if (d.type === 'table2' && !tableError) break; // the mirror is only needed when the table is bad
        if (!s.volume)
          throw corrupt(file, `section '${d.type}' at offset ${off} comes before the volume section`);
        let t: Table;
        const dataLen = d.size - DESCRIPTOR_SIZE;
        try {
          const head = await readAt(st, off + DESCRIPTOR_SIZE, Math.min(dataLen, TABLE_HEADER_SIZE));
          const count = head.length >= 4 ? new DataView(head.buffer).getUint32(0, true) : 0;
          if (count > MAX_TABLE_COUNT) {
            throw corrupt(
              file,
              `section '${d.type}' at offset ${off}: ${count} entries is more than ${MAX_TABLE_COUNT}`,
            );
          }
          const want = Math.min(dataLen, TABLE_HEADER_SIZE + 4 * count + 4);
          t = parseTable(
            file,
            await readAt(st, off + DESCRIPTOR_SIZE, want),
            `section '${d.type}' at offset ${off}`,
            !!sectorsArea,
          );
        } catch (e) {
          if (d.type === 'table' && e instanceof PlatterError && e.code === 'ECORRUPT') {
            tableError = e;
            break;
          }
          throw e;
        }
        tableError = undefined;
        if (t.base !== 0) s.tableBase = true;
        const entriesEnd =
          off + DESCRIPTOR_SIZE + TABLE_HEADER_SIZE + 4 * t.entries.length + (t.hasFooter ? 4 : 0);
        const area = sectorsArea ?? { start: entriesEnd, end: off + d.size };
        addChunks(file, segNo, t, area, d, s);
        break;
      }
      case 'hash':
        s.hashes = {
          ...parseHash(file, await readAt(st, off + DESCRIPTOR_SIZE, Math.min(d.size - DESCRIPTOR_SIZE, 36))),
          ...s.hashes,
        };
        break;
      case 'digest':
        s.hashes = {
          ...s.hashes,
          ...parseDigest(
            file,
            await readAt(st, off + DESCRIPTOR_SIZE, Math.min(d.size - DESCRIPTOR_SIZE, 80)),
          ),
        };
        break;
      case 'error2': {
        const n = d.size - DESCRIPTOR_SIZE;
        if (n > 520 + 8 * 16_000_000)
          throw corrupt(file, `error2 section at offset ${off}: size ${d.size} is too large`);
        s.errors.push(...parseError2(file, await readAt(st, off + DESCRIPTOR_SIZE, n)));
        break;
      }
      case 'ltree':
      case 'ltypes':
      case 'map':
        throw unsupported(
          `${file}: this is an EWF logical evidence file (L01); platter reads disk images (E01) only`,
        );
      case 'next':
      case 'done':
        return d.type;
      default:
        break; // session, xheader, xhash, incomplete ...: nothing platter needs
    }
    off = d.next;
  }
}

function addChunks(
  file: string,
  segNo: number,
  t: Table,
  area: { start: number; end: number },
  d: Descriptor,
  s: ScanState,
): void {
  const cs = s.chunkSize;
  const maxStored = cs + (cs >> 1) + 1024;
  const ix = s.ix;
  const n = t.entries.length;
  for (let i = 0; i < n; i++) {
    const e = t.entries[i];
    const start = t.base + (e & 0x7fffffff);
    const end = i + 1 < n ? t.base + (t.entries[i + 1] & 0x7fffffff) : area.end;
    const what = `section '${d.type}' at offset ${d.offset}: entry ${i} (chunk ${ix.n})`;
    if (start < area.start || start >= area.end) {
      throw corrupt(
        file,
        `${what}: chunk offset ${start} is outside its data area ${area.start}..${area.end}`,
      );
    }
    if (end <= start || end > area.end) {
      throw corrupt(file, `${what}: chunk at ${start} ends at ${end}, outside ${start + 1}..${area.end}`);
    }
    if (ix.n >= ix.seg.length) grow(ix);
    ix.seg[ix.n] = segNo - 1;
    ix.off[ix.n] = start;
    ix.len[ix.n] = Math.min(end - start, maxStored);
    ix.comp[ix.n] = e >>> 31;
    ix.n++;
  }
}

/** Opens the whole segment set starting at `first` (segment 1). */
export async function openSet(first: Storage, ctx: OpenContext): Promise<EwfSet> {
  const s: ScanState = {
    chunkSize: 0,
    hashes: {},
    errors: [],
    ix: {
      seg: new Uint16Array(0),
      off: new Float64Array(0),
      len: new Uint32Array(0),
      comp: new Uint8Array(0),
      n: 0,
    },
    header2: false,
    smart: false,
    tableBase: false,
    linen: false,
    sectionsBySeg: [],
  };
  const storages: Storage[] = [first];
  const files: string[] = [first.name];
  try {
    let segNo = 1;
    let st = first;
    for (;;) {
      const end = await scanSegment(st.name, st, segNo, s);
      if (end === 'done') break;
      segNo++;
      if (segNo > MAX_SEGMENTS) throw corrupt(first.name, `more than ${MAX_SEGMENTS} segment files`);
      const name = segmentName(first.name, segNo);
      try {
        st = await ctx.openSibling(baseName(name));
      } catch (e) {
        if (e instanceof PlatterError && e.code === 'ENOENT') {
          throw new PlatterError(
            'ENOENT',
            `${name}: missing segment file ${segNo} of the EWF set (${baseName(files[files.length - 1])} ends with a 'next' section)`,
          );
        }
        throw e;
      }
      storages.push(st);
      files.push(st.name);
    }
  } catch (e) {
    for (const x of storages.slice(1)) await x.close().catch(() => undefined);
    throw e;
  }

  const vol = s.volume;
  if (!vol) throw corrupt(first.name, 'no volume section');
  const size = vol.sectorCount * vol.bytesPerSector;
  const cs = s.chunkSize;
  const need = Math.ceil(size / cs);
  const ix = s.ix;
  if (ix.n < need) {
    throw corrupt(
      first.name,
      `the tables list ${ix.n} chunks but the media of ${size} bytes needs ${need} of ${cs} bytes`,
    );
  }
  let compressedChunks = 0;
  for (let i = 0; i < need; i++) compressedChunks += ix.comp[i];

  const cache = new Map<number, Promise<Uint8Array>>();
  const sectionAt = (seg: number, off: number): string => {
    const d = s.sectionsBySeg[seg]?.find((x) => off >= x.offset && off < x.offset + x.size);
    return d ? `section '${d.type}' at offset ${d.offset}` : 'no section';
  };

  async function load(i: number): Promise<Uint8Array> {
    const want = Math.min(cs, size - i * cs);
    const seg = ix.seg[i];
    const file = files[seg];
    const where = `chunk ${i} (media offset ${i * cs}) at file offset ${ix.off[i]} in ${sectionAt(seg, ix.off[i])}`;
    if (ix.comp[i]) {
      const raw = await readAt(storages[seg], ix.off[i], ix.len[i]);
      let out: Buffer;
      try {
        out = await inflate(raw, { maxOutputLength: cs });
      } catch (e) {
        throw corrupt(file, `${where}: compressed data does not inflate (${(e as Error).message})`);
      }
      if (out.length !== want)
        throw corrupt(file, `${where}: inflates to ${out.length} bytes, expected ${want}`);
      return out;
    }
    if (ix.len[i] < want + 4)
      throw corrupt(file, `${where}: ${ix.len[i]} stored bytes, expected ${want} + 4-byte checksum`);
    const raw = await readAt(storages[seg], ix.off[i], want + 4);
    const stored = new DataView(raw.buffer).getUint32(want, true);
    const sum = adler32(raw.subarray(0, want));
    if (stored !== sum) {
      throw corrupt(
        file,
        `${where}: Adler-32 checksum 0x${stored.toString(16).padStart(8, '0')} does not match the data (0x${sum.toString(16).padStart(8, '0')})`,
      );
    }
    return raw.subarray(0, want);
  }

  function chunk(i: number): Promise<Uint8Array> {
    let p = cache.get(i);
    if (p) {
      cache.delete(i);
      cache.set(i, p);
      return p;
    }
    p = load(i);
    p.catch(() => cache.delete(i));
    cache.set(i, p);
    if (cache.size > CACHE_CHUNKS) cache.delete(cache.keys().next().value as number);
    return p;
  }

  let subformat = 'encase';
  if (s.smart) subformat = 'ewf';
  else if (s.header2) subformat = s.tableBase ? 'encase6' : 'encase5';
  else if (s.linen) subformat = 'linen';
  else if (s.tableBase) subformat = 'encase6';
  else subformat = 'encase4';

  return {
    files,
    storages,
    volume: vol,
    chunkSize: cs,
    size,
    metadata: s.metadata ?? {},
    hashes: s.hashes,
    errors: s.errors.map((r) => ({
      offset: r.firstSector * vol.bytesPerSector,
      length: r.sectorCount * vol.bytesPerSector,
    })),
    subformat,
    chunkCount: need,
    compressedChunks,
    chunk,
  };
}

const MEDIA_TYPES: Record<number, string> = {
  0: 'removable',
  1: 'fixed',
  3: 'optical',
  14: 'logical',
  16: 'memory',
};
const COMPRESSION: Record<number, string> = { 0: 'none', 1: 'fast', 2: 'best' };

/** The DiskImpl of an opened set (read-only). */
export function setDisk(set: EwfSet): DiskImpl {
  const cs = set.chunkSize;
  return {
    size: set.size,
    granularity: cs,
    storages: set.storages,
    async read(buf, offset) {
      const first = Math.floor(offset / cs);
      const last = Math.floor((offset + buf.length - 1) / cs);
      let next = first;
      const worker = async (): Promise<void> => {
        while (next <= last) {
          const i = next++;
          const data = await set.chunk(i);
          const a = Math.max(offset, i * cs);
          const b = Math.min(offset + buf.length, i * cs + data.length);
          buf.set(data.subarray(a - i * cs, b - i * cs), a - offset);
        }
      };
      await Promise.all(Array.from({ length: Math.min(PARALLEL, last - first + 1) }, worker));
    },
    async close() {
      for (const st of set.storages) await st.close().catch(() => undefined);
    },
    async info(): Promise<FormatInfo> {
      const v = set.volume;
      return {
        format: 'ewf',
        subformat: set.subformat,
        granularity: cs,
        details: {
          segmentFiles: set.files,
          bytesPerSector: v.bytesPerSector,
          sectorsPerChunk: v.sectorsPerChunk,
          sectorCount: v.sectorCount,
          chunkCount: set.chunkCount,
          compressedChunks: set.compressedChunks,
          mediaType: MEDIA_TYPES[v.mediaType] ?? `0x${v.mediaType.toString(16)}`,
          physical: (v.mediaFlags & 2) !== 0,
          ...(v.compressionLevel !== undefined
            ? { compression: COMPRESSION[v.compressionLevel] ?? String(v.compressionLevel) }
            : {}),
          ...(v.errorGranularity ? { errorGranularity: v.errorGranularity } : {}),
          ...(v.guid ? { setIdentifier: v.guid } : {}),
          caseMetadata: set.metadata,
          storedHashes: set.hashes,
          sha256: 'not stored: the EWF (E01) layout has no place for SHA-256; see the acquisition log',
          acquisitionErrors: set.errors,
        },
      };
    },
  };
}
