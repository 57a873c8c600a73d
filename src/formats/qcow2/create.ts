/**
 * Creating qcow2 images, with qemu-img's option names:
 *
 *   compat=0.10|1.1 (or v2|v3)   version 2 or 3 (default 1.1)
 *   cluster_size=512..2M         power of two (default 64K)
 *   refcount_bits=1..64          power of two (v2: 16 only; default 16)
 *   lazy_refcounts=on|off        v3 only
 *   compression_type=zlib|zstd   zstd needs v3
 *   preallocation=off|metadata|falloc|full
 *
 * Layout as qemu lays it: header in cluster 0, refcount table in cluster 1,
 * the first refcount block in cluster 2, the L1 table from cluster 3; any
 * further metadata comes from the ordinary allocator.
 */
import { alignUp } from '../../core/bytes.js';
import { invalid, PlatterError, unsupported } from '../../core/errors.js';
import { writeZerosTo } from '../../core/storage.js';
import type { CreateContext } from '../driver.js';
import {
  COMPAT_LAZY_REFCOUNTS,
  type CompressionType,
  type Header,
  MAX_L1_BYTES,
  serializeHeader,
} from './header.js';
import { Qcow2Image } from './image.js';
import { standardEntry, writeHiLo } from './tables.js';

export type Preallocation = 'off' | 'metadata' | 'falloc' | 'full';

export interface CreateOptions {
  version: 2 | 3;
  clusterBits: number;
  refcountOrder: number;
  lazyRefcounts: boolean;
  compressionType: CompressionType;
  preallocation: Preallocation;
}

const KNOWN = [
  'compat',
  'cluster_size',
  'refcount_bits',
  'lazy_refcounts',
  'compression_type',
  'preallocation',
];

function onOff(v: string, key: string): boolean {
  if (v === 'on' || v === 'true') return true;
  if (v === 'off' || v === 'false') return false;
  throw invalid(`qcow2: ${key}=${v}: expected on or off`);
}

export function parseCreateOptions(o: Readonly<Record<string, string>>): CreateOptions {
  for (const k of Object.keys(o)) {
    if (k === 'extended_l2' && o[k] === 'off') continue;
    if (k === 'extended_l2' || k.startsWith('encrypt') || k === 'data_file') {
      throw unsupported(`qcow2: option '${k}' is not supported by platter`);
    }
    if (!KNOWN.includes(k)) throw invalid(`qcow2: unknown option '${k}' (known: ${KNOWN.join(', ')})`);
  }
  const compat = o.compat ?? '1.1';
  let version: 2 | 3;
  if (compat === '0.10' || compat === 'v2') version = 2;
  else if (compat === '1.1' || compat === 'v3') version = 3;
  else throw invalid(`qcow2: compat=${compat}: expected 0.10 or 1.1`);
  const csText = o.cluster_size ?? '65536';
  const cs = parseSizeLoose(csText);
  const clusterBits = Math.log2(cs);
  if (!Number.isInteger(clusterBits) || clusterBits < 9 || clusterBits > 21) {
    throw invalid(`qcow2: cluster_size=${csText}: must be a power of two from 512 to 2M`);
  }
  const rb = Number(o.refcount_bits ?? '16');
  const refcountOrder = Math.log2(rb);
  if (!Number.isInteger(refcountOrder) || refcountOrder < 0 || refcountOrder > 6) {
    throw invalid(`qcow2: refcount_bits=${o.refcount_bits}: must be a power of two from 1 to 64`);
  }
  if (version === 2 && rb !== 16) throw invalid('qcow2: compat=0.10 supports only refcount_bits=16');
  const lazyRefcounts = o.lazy_refcounts ? onOff(o.lazy_refcounts, 'lazy_refcounts') : false;
  if (lazyRefcounts && version === 2) throw invalid('qcow2: lazy_refcounts needs compat=1.1');
  const ct = o.compression_type ?? 'zlib';
  if (ct !== 'zlib' && ct !== 'zstd') throw invalid(`qcow2: compression_type=${ct}: expected zlib or zstd`);
  if (ct === 'zstd' && version === 2) throw invalid('qcow2: compression_type=zstd needs compat=1.1');
  const pre = o.preallocation ?? 'off';
  if (pre !== 'off' && pre !== 'metadata' && pre !== 'falloc' && pre !== 'full') {
    throw invalid(`qcow2: preallocation=${pre}: expected off, metadata, falloc or full`);
  }
  return { version, clusterBits, refcountOrder, lazyRefcounts, compressionType: ct, preallocation: pre };
}

function parseSizeLoose(t: string): number {
  const m = /^(\d+)([kKmM]?)$/.exec(t.trim());
  if (!m) throw invalid(`qcow2: cluster_size=${t}: expected a size such as 65536 or 64K`);
  return Number(m[1]) * (m[2] ? (m[2].toLowerCase() === 'k' ? 1024 : 1 << 20) : 1);
}

export async function create(ctx: CreateContext): Promise<void> {
  const o = parseCreateOptions(ctx.options);
  const file = ctx.storage.name;
  // A size between sectors is rounded up to the next one, as qemu-img does
  // (the header's size field counts bytes, but qemu reads whole sectors).
  const size = alignUp(ctx.size, 512);
  if (ctx.backing && o.preallocation !== 'off') {
    throw invalid('qcow2: preallocation cannot be combined with a backing file (its data would be hidden)');
  }
  const cs = 2 ** o.clusterBits;
  const l2Entries = cs / 8;
  const l1Size = Math.ceil(size / cs / l2Entries);
  if (l1Size * 8 > MAX_L1_BYTES) {
    throw invalid(
      `${file}: virtual size ${size} is too large for cluster_size ${cs} (L1 table over ${MAX_L1_BYTES} bytes)`,
    );
  }
  const h: Header = {
    version: o.version,
    clusterBits: o.clusterBits,
    size,
    l1Size,
    l1Offset: 0,
    refcountTableOffset: cs,
    refcountTableClusters: 1,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    incompatible: 0n,
    compatible: o.lazyRefcounts ? COMPAT_LAZY_REFCOUNTS : 0n,
    autoclear: 0n,
    refcountOrder: o.refcountOrder,
    headerLength: o.version === 3 ? 112 : 72,
    compressionType: o.compressionType,
    backing: ctx.backing ? { name: ctx.backing.name, format: ctx.backing.format } : undefined,
    otherExtensions: [],
    extraFields: new Uint8Array(0),
  };
  const s = ctx.storage;
  const header = serializeHeader(h, file);
  // Cluster 0 header, 1 refcount table -> 2 first refcount block (refcounts of 0..2 = 1).
  const head = new Uint8Array(3 * cs);
  head.set(header);
  new DataView(head.buffer).setBigUint64(cs, BigInt(2 * cs));
  const bits = 2 ** o.refcountOrder;
  const block = head.subarray(2 * cs);
  for (let i = 0; i < 3; i++) setRefcount(block, i, bits, 1);
  await s.write(head, 0);

  const img = new Qcow2Image(
    s,
    file,
    h,
    3 * cs,
    new Uint8Array(l1Size * 8),
    head.slice(cs, 2 * cs),
    false,
    false,
  );
  if (l1Size > 0) {
    const l1Clusters = Math.ceil((l1Size * 8) / cs);
    const off = await img.allocClusters(l1Clusters);
    // The table's own bytes: the file may end inside its last cluster (as qemu-img leaves it).
    await img.writeHost(new Uint8Array(l1Size * 8), off);
    h.l1Offset = off;
  }
  await img.writeHeader();
  if (o.preallocation !== 'off') await preallocate(img, o.preallocation);
  if ((await s.size()) < img.fileSize) await s.truncate(img.fileSize);
}

function setRefcount(block: Uint8Array, i: number, bits: number, v: number): void {
  if (bits < 8) block[(i * bits) >> 3] |= v << ((i * bits) & 7);
  else {
    const bytes = bits / 8;
    block[i * bytes + bytes - 1] = v;
  }
}

/**
 * metadata: every guest cluster gets a host cluster (reads zeros from the
 * sparse file); falloc also reserves the space; full writes the zeros.
 */
async function preallocate(img: Qcow2Image, mode: Preallocation): Promise<void> {
  const cs = img.cs;
  const clusters = Math.ceil(img.size / cs);
  const s = img.storage;
  for (let l1i = 0; l1i * img.l2Entries < clusters; l1i++) {
    const first = l1i * img.l2Entries;
    const n = Math.min(img.l2Entries, clusters - first);
    const l2off = await img.allocClusters(1);
    const data = await img.allocClusters(n);
    const table = new Uint8Array(cs);
    for (let k = 0; k < n; k++) {
      const [hi, lo] = standardEntry(data + k * cs, true);
      writeHiLo(table, k, hi, lo);
    }
    const end = data + n * cs;
    if (mode === 'full') {
      await writeZerosTo(s, data, end - data, 4 << 20);
    } else if (mode === 'falloc' && s.allocate) {
      await s.allocate(data, n * cs);
    } else if (mode === 'falloc') {
      throw new PlatterError(
        'EUNSUPPORTED',
        `${img.file}: this storage cannot reserve space (preallocation=falloc); use full`,
      );
    }
    img.fileSize = Math.max(img.fileSize, end);
    await img.writeHost(table, l2off);
    const [hi, lo] = standardEntry(l2off, true);
    await img.writeL1Entry(l1i, hi, lo);
  }
  if ((await s.size()) < img.fileSize) await s.truncate(img.fileSize);
}
