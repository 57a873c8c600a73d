/**
 * qcow2 header and header extensions (QEMU docs/interop/qcow2.txt, "Header").
 *
 *   bytes   field                      notes
 *   0-3     magic "QFI\xfb"
 *   4-7     version                    2 (compat=0.10) or 3 (compat=1.1)
 *   8-15    backing_file_offset        0 = no backing; name lives in cluster 0
 *   16-19   backing_file_size          at most 1023
 *   20-23   cluster_bits               9..21 (512 B .. 2 MiB, qemu's limit)
 *   24-31   size                       virtual size in bytes
 *   32-35   crypt_method               0 only (encryption is not supported)
 *   36-39   l1_size                    entries
 *   40-47   l1_table_offset            cluster aligned
 *   48-55   refcount_table_offset      cluster aligned
 *   56-59   refcount_table_clusters
 *   60-63   nb_snapshots
 *   64-71   snapshots_offset
 *   -- version 3 --
 *   72-79   incompatible_features      0 dirty, 1 corrupt, 2 external data, 3 compression type, 4 extended L2
 *                                      (extended L2: read-only support)
 *   80-87   compatible_features        0 lazy refcounts
 *   88-95   autoclear_features         0 bitmaps, 1 raw external data
 *   96-99   refcount_order             refcount_bits = 1 << order, order <= 6 (v2: 4)
 *   100-103 header_length              >= 104, multiple of 8
 *   104     compression_type           0 zlib, 1 zstd (when header_length > 104)
 *
 * Extensions follow the header: {u32 type, u32 length, data, pad to 8}, ended by
 * type 0. Unknown ones are kept and written back unchanged.
 */
import { u64, viewOf } from '../../core/bytes.js';
import { corrupt, PlatterError, unsupported } from '../../core/errors.js';

export const MAGIC = 0x514649fb;
export const MIN_CLUSTER_BITS = 9;
export const MAX_CLUSTER_BITS = 21;
/** qemu's implementation limits, which keep untrusted sizes sane. */
export const MAX_L1_BYTES = 32 << 20;
export const MAX_REFTABLE_BYTES = 8 << 20;
export const MAX_SNAPSHOTS = 65536;
export const MAX_BACKING_NAME = 1023;

export const INCOMPAT_DIRTY = 1n;
export const INCOMPAT_CORRUPT = 2n;
export const INCOMPAT_DATA_FILE = 4n;
export const INCOMPAT_COMPRESSION = 8n;
export const INCOMPAT_EXTL2 = 16n;
const INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION | INCOMPAT_EXTL2;
export const COMPAT_LAZY_REFCOUNTS = 1n;

export const EXT_END = 0;
export const EXT_BACKING_FORMAT = 0xe2792aca;
export const EXT_FEATURE_TABLE = 0x6803f857;
export const EXT_BITMAPS = 0x23852875;
export const EXT_DATA_FILE = 0x44415441;

export type CompressionType = 'zlib' | 'zstd';

export interface Extension {
  type: number;
  data: Uint8Array;
}

export interface Header {
  version: 2 | 3;
  clusterBits: number;
  size: number;
  l1Size: number;
  l1Offset: number;
  refcountTableOffset: number;
  refcountTableClusters: number;
  nbSnapshots: number;
  snapshotsOffset: number;
  incompatible: bigint;
  compatible: bigint;
  autoclear: bigint;
  refcountOrder: number;
  /** v2: 72. */
  headerLength: number;
  compressionType: CompressionType;
  backing?: { name: string; format?: string };
  /** Extensions other than backing format and feature table, kept verbatim. */
  otherExtensions: Extension[];
  /** Header bytes past the fields platter knows (v3, header_length > 112), kept verbatim. */
  extraFields: Uint8Array;
}

const FEATURE_NAMES: Array<[number, number, string]> = [
  [0, 0, 'dirty bit'],
  [0, 1, 'corrupt bit'],
  [0, 2, 'external data file'],
  [0, 3, 'compression type'],
  [0, 4, 'extended L2 entries'],
  [1, 0, 'lazy refcounts'],
  [2, 0, 'bitmaps'],
  [2, 1, 'raw external data'],
];

const text = new TextDecoder();
const encoder = new TextEncoder();

/** Does a cluster-0 prefix start with the qcow2 magic? */
export function hasMagic(head: Uint8Array): boolean {
  return head.length >= 8 && viewOf(head).getUint32(0) === MAGIC;
}

/** Reads the cluster size from the first bytes, with its limit checked. */
export function clusterBitsOf(head: Uint8Array, file: string): number {
  const bits = viewOf(head).getUint32(20);
  if (bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS) {
    throw corrupt(file, `cluster_bits ${bits} is outside ${MIN_CLUSTER_BITS}..${MAX_CLUSTER_BITS}`);
  }
  return bits;
}

/**
 * Refuses a version other than 2 and 3 first (before fields whose place it
 * decides). Version 1 is QEMU's older "qcow" format, with the same magic.
 */
export function checkVersion(head: Uint8Array, file: string): void {
  const version = viewOf(head).getUint32(4);
  if (version === 1)
    throw unsupported(
      `${file}: a qcow (version 1) image, which platter cannot open; qemu-img convert -O qcow2 makes a qcow2 of it`,
    );
  if (version !== 2 && version !== 3)
    throw unsupported(`${file}: qcow2 version ${version} is not supported (2 or 3)`);
}

/**
 * Parses the header from the first cluster (or the whole file if shorter).
 * Refuses what platter cannot handle safely: encryption, external data
 * files, extended L2 entries, unknown incompatible features.
 */
export function parseHeader(c0: Uint8Array, file: string, fileSize: number): Header {
  if (c0.length < 72) throw corrupt(file, `file is ${c0.length} bytes, shorter than a qcow2 header (72)`);
  const v = viewOf(c0);
  if (v.getUint32(0) !== MAGIC) throw new PlatterError('EFORMAT', `${file}: not a qcow2 image (bad magic)`);
  checkVersion(c0, file);
  const version = v.getUint32(4) as 2 | 3;
  const clusterBits = clusterBitsOf(c0, file);
  const cs = 2 ** clusterBits;
  const size = u64(v, 24, false, 'virtual size', file);
  const crypt = v.getUint32(32);
  if (crypt !== 0)
    throw unsupported(`${file}: encrypted qcow2 images (crypt_method ${crypt}) are not supported`);

  let incompatible = 0n;
  let compatible = 0n;
  let autoclear = 0n;
  let refcountOrder = 4;
  let headerLength = 72;
  let compressionType: CompressionType = 'zlib';
  let extraFields: Uint8Array = new Uint8Array(0);
  if (version === 3) {
    if (c0.length < 104) throw corrupt(file, 'version 3 header is truncated (less than 104 bytes)');
    incompatible = v.getBigUint64(72);
    compatible = v.getBigUint64(80);
    autoclear = v.getBigUint64(88);
    refcountOrder = v.getUint32(96);
    headerLength = v.getUint32(100);
    if (headerLength < 104 || headerLength % 8 !== 0 || headerLength > Math.min(cs, c0.length)) {
      throw corrupt(
        file,
        `header_length ${headerLength} is invalid (at least 104, a multiple of 8, within cluster 0 of ${cs} bytes)`,
      );
    }
    if (refcountOrder > 6) throw corrupt(file, `refcount_order ${refcountOrder} exceeds 6`);
    if (headerLength > 104) {
      const ct = c0[104];
      if (ct === 1) compressionType = 'zstd';
      else if (ct !== 0)
        throw unsupported(`${file}: compression type ${ct} is not supported (0 zlib, 1 zstd)`);
      if ((ct !== 0) !== ((incompatible & INCOMPAT_COMPRESSION) !== 0n)) {
        throw corrupt(file, `compression_type ${ct} disagrees with the compression type feature bit`);
      }
    } else if (incompatible & INCOMPAT_COMPRESSION) {
      throw corrupt(file, 'compression type feature bit set but the header has no compression_type field');
    }
    if (headerLength > 112) extraFields = c0.slice(112, headerLength);
  }

  const h: Header = {
    version,
    clusterBits,
    size,
    l1Size: v.getUint32(36),
    l1Offset: u64(v, 40, false, 'l1_table_offset', file),
    refcountTableOffset: u64(v, 48, false, 'refcount_table_offset', file),
    refcountTableClusters: v.getUint32(56),
    nbSnapshots: v.getUint32(60),
    snapshotsOffset: u64(v, 64, false, 'snapshots_offset', file),
    incompatible,
    compatible,
    autoclear,
    refcountOrder,
    headerLength,
    compressionType,
    otherExtensions: [],
    extraFields,
  };

  // Extensions: from header_length to the backing name (or the end of cluster 0).
  const backingOffset = u64(v, 8, false, 'backing_file_offset', file);
  const backingSize = v.getUint32(16);
  const extEnd = Math.min(c0.length, backingOffset > 0 ? backingOffset : cs);
  let featureTable: Uint8Array | undefined;
  let backingFormat: string | undefined;
  for (let at = headerLength; at + 8 <= extEnd; ) {
    const type = v.getUint32(at);
    const len = v.getUint32(at + 4);
    if (type === EXT_END) break;
    if (at + 8 + len > extEnd) {
      throw corrupt(
        file,
        `header extension 0x${type.toString(16)} at ${at} with length ${len} runs past cluster 0`,
      );
    }
    const data = c0.slice(at + 8, at + 8 + len);
    if (type === EXT_BACKING_FORMAT) backingFormat = text.decode(data);
    else if (type === EXT_FEATURE_TABLE) featureTable = data;
    else h.otherExtensions.push({ type, data });
    at += 8 + Math.ceil(len / 8) * 8;
  }

  const unknown = incompatible & ~INCOMPAT_KNOWN;
  if (unknown) {
    const names: string[] = [];
    for (let bit = 0; bit < 64; bit++) {
      if (!(unknown & (1n << BigInt(bit)))) continue;
      names.push(featureName(featureTable, 0, bit) ?? `unknown incompatible feature bit ${bit}`);
    }
    if (unknown & INCOMPAT_DATA_FILE) {
      throw unsupported(`${file}: qcow2 images with an external data file are not supported`);
    }
    throw unsupported(`${file}: qcow2 image uses features platter does not support: ${names.join(', ')}`);
  }

  if (backingOffset > 0) {
    if (backingSize === 0 || backingSize > MAX_BACKING_NAME) {
      throw corrupt(file, `backing_file_size ${backingSize} is outside 1..${MAX_BACKING_NAME}`);
    }
    if (backingOffset + backingSize > c0.length) {
      throw corrupt(
        file,
        `backing file name at ${backingOffset}+${backingSize} is past cluster 0 (${c0.length} bytes)`,
      );
    }
    h.backing = {
      name: text.decode(c0.subarray(backingOffset, backingOffset + backingSize)),
      format: backingFormat,
    };
  }

  if (incompatible & INCOMPAT_EXTL2 && clusterBits < 14) {
    throw corrupt(file, `extended L2 entries need cluster_bits of at least 14 (got ${clusterBits})`);
  }
  validateLayout(h, file, fileSize);
  return h;
}

function featureName(table: Uint8Array | undefined, type: number, bit: number): string | undefined {
  if (!table) return undefined;
  for (let i = 0; i + 48 <= table.length; i += 48) {
    if (table[i] === type && table[i + 1] === bit) {
      const raw = table.subarray(i + 2, i + 48);
      const end = raw.indexOf(0);
      return text.decode(end < 0 ? raw : raw.subarray(0, end));
    }
  }
  return undefined;
}

/** One guard per table: aligned, inside the file, sized within qemu's limits. */
function validateLayout(h: Header, file: string, fileSize: number): void {
  const cs = 2 ** h.clusterBits;
  const l2Entries = cs / (h.incompatible & INCOMPAT_EXTL2 ? 16 : 8);
  const needL1 = Math.ceil(h.size / cs / l2Entries);
  if (h.l1Size * 8 > MAX_L1_BYTES) {
    throw corrupt(file, `l1_size ${h.l1Size} exceeds the limit of ${MAX_L1_BYTES / 8} entries`);
  }
  if (h.l1Size < needL1) {
    throw corrupt(file, `l1_size ${h.l1Size} is too small for virtual size ${h.size} (needs ${needL1})`);
  }
  checkTable(file, 'L1 table', h.l1Offset, h.l1Size * 8, cs, fileSize);
  if (h.refcountTableClusters * cs > MAX_REFTABLE_BYTES) {
    throw corrupt(
      file,
      `refcount_table_clusters ${h.refcountTableClusters} exceeds the limit of ${MAX_REFTABLE_BYTES} bytes`,
    );
  }
  if (h.refcountTableClusters === 0) throw corrupt(file, 'refcount_table_clusters is 0');
  checkTable(file, 'refcount table', h.refcountTableOffset, h.refcountTableClusters * cs, cs, fileSize);
  if (h.nbSnapshots > MAX_SNAPSHOTS) {
    throw corrupt(file, `nb_snapshots ${h.nbSnapshots} exceeds the limit of ${MAX_SNAPSHOTS}`);
  }
  if (h.nbSnapshots > 0)
    checkTable(file, 'snapshot table', h.snapshotsOffset, 40 * h.nbSnapshots, cs, fileSize);
}

/** A table must start on a cluster boundary and lie inside the file. */
export function checkTable(
  file: string,
  what: string,
  offset: number,
  length: number,
  cs: number,
  fileSize: number,
): void {
  if (length === 0) return;
  if (offset % cs !== 0)
    throw corrupt(file, `${what} offset 0x${offset.toString(16)} is not aligned to the cluster size ${cs}`);
  if (offset === 0) throw corrupt(file, `${what} offset 0 overlaps the header`);
  if (offset + length > fileSize) {
    throw corrupt(
      file,
      `${what} at 0x${offset.toString(16)}+${length} is past end of file (size ${fileSize})`,
    );
  }
}

/** The feature name table qemu writes, so other tools can name our bits. */
function featureTableBytes(): Uint8Array {
  const out = new Uint8Array(48 * FEATURE_NAMES.length);
  FEATURE_NAMES.forEach(([type, bit, name], i) => {
    out[i * 48] = type;
    out[i * 48 + 1] = bit;
    out.set(encoder.encode(name).subarray(0, 46), i * 48 + 2);
  });
  return out;
}

/**
 * Serialises header + extensions + backing name, to be written at offset 0.
 * The feature name table (384 bytes) is optional: it is left out where it
 * would not fit with the rest (small clusters with a backing file; qemu leaves
 * it out of such headers too). Throws if the rest does not fit in cluster 0.
 */
export function serializeHeader(h: Header, file: string): Uint8Array {
  const cs = 2 ** h.clusterBits;
  const exts: Extension[] = [];
  if (h.backing?.format) exts.push({ type: EXT_BACKING_FORMAT, data: encoder.encode(h.backing.format) });
  exts.push(...h.otherExtensions);
  const name = h.backing ? encoder.encode(h.backing.name) : new Uint8Array(0);
  if (name.length > MAX_BACKING_NAME) {
    throw new PlatterError('EINVAL', `${file}: backing file name is longer than ${MAX_BACKING_NAME} bytes`);
  }
  const extBytes = (e: Extension) => 8 + Math.ceil(e.data.length / 8) * 8;
  let len = h.headerLength;
  for (const e of exts) len += extBytes(e);
  len += 8 + name.length; // end marker, backing name
  if (h.version === 3) {
    const table: Extension = { type: EXT_FEATURE_TABLE, data: featureTableBytes() };
    if (len + extBytes(table) <= cs) {
      exts.splice(h.backing?.format ? 1 : 0, 0, table);
      len += extBytes(table);
    }
  }
  const backingAt = len - name.length;
  if (len > cs) {
    throw new PlatterError(
      'EINVAL',
      `${file}: header, extensions and backing name (${len} bytes) do not fit in a ${cs}-byte cluster`,
    );
  }
  const out = new Uint8Array(len);
  const v = viewOf(out);
  v.setUint32(0, MAGIC);
  v.setUint32(4, h.version);
  v.setBigUint64(8, BigInt(h.backing ? backingAt : 0));
  v.setUint32(16, name.length);
  v.setUint32(20, h.clusterBits);
  v.setBigUint64(24, BigInt(h.size));
  v.setUint32(32, 0);
  v.setUint32(36, h.l1Size);
  v.setBigUint64(40, BigInt(h.l1Offset));
  v.setBigUint64(48, BigInt(h.refcountTableOffset));
  v.setUint32(56, h.refcountTableClusters);
  v.setUint32(60, h.nbSnapshots);
  v.setBigUint64(64, BigInt(h.snapshotsOffset));
  if (h.version === 3) {
    let incompat = h.incompatible & ~INCOMPAT_COMPRESSION;
    if (h.compressionType !== 'zlib') incompat |= INCOMPAT_COMPRESSION;
    v.setBigUint64(72, incompat);
    v.setBigUint64(80, h.compatible);
    v.setBigUint64(88, h.autoclear);
    v.setUint32(96, h.refcountOrder);
    v.setUint32(100, h.headerLength);
    if (h.headerLength > 104) out[104] = h.compressionType === 'zstd' ? 1 : 0;
    out.set(h.extraFields, 112);
  }
  let at = h.headerLength;
  for (const e of exts) {
    v.setUint32(at, e.type);
    v.setUint32(at + 4, e.data.length);
    out.set(e.data, at + 8);
    at += 8 + Math.ceil(e.data.length / 8) * 8;
  }
  // end marker: already zero
  out.set(name, backingAt);
  return out;
}
