/**
 * qcow2: QEMU's copy-on-write format (QEMU docs/interop/qcow2.txt), versions
 * 2 (compat=0.10) and 3 (compat=1.1).
 *
 * Supported: cluster sizes 512 B to 2 MiB, every refcount_bits (1..64), zero
 * clusters, compressed clusters (zlib and zstd) read and written, backing
 * files with a format name, lazy refcounts (dirty bit), the corrupt bit,
 * internal snapshots, check and repair, resize.
 * Extended L2 entries (subclusters) are read, not written.
 * Refused with a clear error: encryption, external data files, unknown
 * incompatible features. Persistent dirty bitmaps are removed (and their
 * clusters freed) before platter's first change, since it cannot keep them.
 */
import type { DiskImpl, FormatInfo } from '../../core/disk.js';
import { invalid, PlatterError, unsupported } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import type { FormatDriver, OpenContext, OpenedImage } from '../driver.js';
import { checkImage } from './check.js';
import { loadZstd } from './compressed.js';
import { create } from './create.js';
import {
  COMPAT_LAZY_REFCOUNTS,
  checkVersion,
  clusterBitsOf,
  hasMagic,
  INCOMPAT_CORRUPT,
  INCOMPAT_DIRTY,
  parseHeader,
} from './header.js';
import { Qcow2Image } from './image.js';
import { snapshotFeature } from './snapshots.js';
import { makeEmpty, resize, setBacking } from './surgery.js';

async function probe(storage: Storage): Promise<number> {
  try {
    const size = await storage.size();
    if (size < 72) return 0;
    const head = new Uint8Array(8);
    await storage.read(head, 0);
    return hasMagic(head) ? 100 : 0;
  } catch {
    return 0;
  }
}

const OPEN_OPTIONS = ['compress'];

/** Reads header, L1 and refcount tables; every size is checked against the file first. */
export async function openQcow2(storage: Storage, readOnly: boolean, compress: boolean): Promise<Qcow2Image> {
  const file = storage.name;
  const fileSize = await storage.size();
  const head = new Uint8Array(Math.min(fileSize, 512));
  await storage.read(head, 0);
  if (!hasMagic(head)) throw new PlatterError('EFORMAT', `${file}: not a qcow2 image (bad magic)`);
  if (head.length < 72)
    throw new PlatterError('ECORRUPT', `${file}: corrupt image: header is truncated (${head.length} bytes)`);
  checkVersion(head, file);
  const cs = 2 ** clusterBitsOf(head, file);
  const c0 = new Uint8Array(Math.min(fileSize, cs));
  await storage.read(c0, 0);
  const h = parseHeader(c0, file, fileSize);
  const l1 = new Uint8Array(h.l1Size * 8);
  if (l1.length) await storage.read(l1, h.l1Offset);
  const reftable = new Uint8Array(h.refcountTableClusters * cs);
  await storage.read(reftable, h.refcountTableOffset);
  if (h.compressionType === 'zstd') await loadZstd();
  return new Qcow2Image(storage, file, h, fileSize, l1, reftable, readOnly, compress);
}

async function open(storage: Storage, ctx: OpenContext): Promise<OpenedImage> {
  for (const k of Object.keys(ctx.options)) {
    if (!OPEN_OPTIONS.includes(k))
      throw invalid(`qcow2: unknown open option '${k}' (known: ${OPEN_OPTIONS.join(', ')})`);
  }
  const compress = ctx.options.compress === 'on';
  const img = await openQcow2(storage, ctx.readOnly, compress);
  if (!ctx.readOnly && img.extL2) {
    throw unsupported(
      `${storage.name}: platter reads qcow2 images with extended L2 entries but cannot write them; open read-only, or convert to a new image`,
    );
  }
  if (!ctx.readOnly) {
    if (img.h.incompatible & INCOMPAT_DIRTY && !(img.h.incompatible & INCOMPAT_CORRUPT)) {
      // Refcounts may be stale after a crash with lazy refcounts: rebuild them.
      await checkImage(img, 'all');
      img.h.incompatible &= ~INCOMPAT_DIRTY;
      await img.writeHeader();
    }
  }
  return { disk: diskOf(img), backing: img.h.backing };
}

function diskOf(img: Qcow2Image): DiskImpl {
  const writable = !img.readOnly;
  return {
    size: img.size,
    granularity: img.cs,
    storages: [img.storage],
    read: (buf, offset) => img.read(buf, offset),
    write: writable ? (buf, offset) => img.write(buf, offset) : undefined,
    writeZeroes: writable ? (offset, length, opts) => img.writeZeroes(offset, length, opts) : undefined,
    discard: writable ? (offset, length) => img.discard(offset, length) : undefined,
    extents: (offset, length) => img.extents(offset, length),
    hostSpans: (offset, length, purpose) => img.hostSpans(offset, length, purpose),
    flush: () => img.flush(),
    close: () => img.close(),
    info: async () => infoOf(img),
    features: writable
      ? {
          check: (o) => checkImage(img, o.repair),
          repairs: true,
          resize: (size, o) => resize(img, size, o),
          snapshots: snapshotFeature(img),
          setBacking: (b) => setBacking(img, b),
          makeEmpty: () => makeEmpty(img),
          wholeGranules: img.compress,
        }
      : {
          check: async (o) => {
            if (o.repair !== 'none')
              throw new PlatterError('EREADONLY', `${img.file}: open the image writable to repair it`);
            return checkImage(img, 'none');
          },
          repairs: true,
          snapshots: snapshotFeature(img),
        },
  };
}

async function infoOf(img: Qcow2Image): Promise<FormatInfo> {
  const h = img.h;
  const snaps = await snapshotFeature(img).list();
  return {
    format: 'qcow2',
    granularity: img.cs,
    backing: h.backing,
    snapshots: snaps,
    dirty: (h.incompatible & INCOMPAT_DIRTY) !== 0n,
    corrupt: (h.incompatible & INCOMPAT_CORRUPT) !== 0n,
    details: {
      compat: h.version === 3 ? '1.1' : '0.10',
      clusterSize: img.cs,
      refcountBits: 2 ** h.refcountOrder,
      lazyRefcounts: (h.compatible & COMPAT_LAZY_REFCOUNTS) !== 0n,
      compressionType: h.compressionType,
      extendedL2: img.extL2,
      l1Size: h.l1Size,
    },
  };
}

export const qcow2: FormatDriver = {
  name: 'qcow2',
  probe,
  open,
  create,
  capabilities: { create: true, write: true, backing: true, compression: true, snapshots: true },
};
