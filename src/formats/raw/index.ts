/**
 * raw: the bytes of the store are the bytes of the disk. The store may be a
 * file, a block device or a split set (NAME.001, NAME.002, … opened as one
 * Storage by the host), so monolithic and split flat images are the same here.
 *
 * Provisioning:
 *   thin   a sparse host file; its holes (SEEK_HOLE) report as `zero`
 *   thick  create -o preallocation=falloc (fallocate: space reserved, reads
 *          zeros) or preallocation=full (zeros written)
 *
 * writeZeroes punches a hole when the caller allows unmapping, else zeroes the
 * range in place (FALLOC_FL_ZERO_RANGE), else writes zeros; discard punches a
 * hole. A raw image has no header, so probing answers 1 (last resort), and
 * formats/open.ts refuses to call a file raw that carries another format's
 * signature. An empty (0-byte) store is not a disk.
 */
import type { DiskImpl, Extent } from '../../core/disk.js';
import { PlatterError } from '../../core/errors.js';
import { type Storage, writeZerosTo } from '../../core/storage.js';
import type { CreateContext, FormatDriver, OpenContext, OpenedImage } from '../driver.js';

const PREALLOCATION = ['off', 'falloc', 'full'] as const;

/** A Storage that can zero a range in place (storage/file.ts, storage/split.ts). */
type ZeroRangeStorage = Storage & { zeroRange?: (offset: number, length: number) => Promise<void> };

function probe(): Promise<number> {
  return Promise.resolve(1);
}

async function open(storage: ZeroRangeStorage, ctx: OpenContext): Promise<OpenedImage> {
  const size = await storage.size();
  if (size === 0) {
    throw new PlatterError('EFORMAT', `${storage.name}: empty file (0 bytes): not a disk image`);
  }
  const writable = !ctx.readOnly;
  const disk: DiskImpl = {
    size,
    storages: [storage],
    read: (buf, offset) => storage.read(buf, offset),
    write: writable ? (buf, offset) => storage.write(buf, offset) : undefined,
    writeZeroes: writable
      ? async (offset, length, { mayUnmap }) => {
          if (mayUnmap && storage.discard) return storage.discard(offset, length);
          if (storage.zeroRange) return storage.zeroRange(offset, length);
          return writeZerosTo(storage, offset, length);
        }
      : undefined,
    discard: writable && storage.discard ? (offset, length) => storage.discard!(offset, length) : undefined,
    extents: storage.extents
      ? async (offset, length) =>
          (await storage.extents!(offset, length)).map(
            (e): Extent => ({
              offset: e.offset,
              length: e.length,
              status: e.kind === 'hole' ? 'zero' : 'data',
              depth: 0,
            }),
          )
      : undefined,
    // The store is the disk: every byte is where it is, for reads and writes alike.
    hostSpans: async (offset, length) => [{ offset, length, storage, at: offset }],
    flush: () => storage.flush(),
    close: () => storage.close(),
    info: async () => ({ format: 'raw' }),
    features: writable
      ? {
          // The file is the disk: resizing is truncating (a split set grows into new segments).
          resize: async (newSize) => {
            if ((storage as { isBlockDevice?: boolean }).isBlockDevice) {
              throw new PlatterError('EUNSUPPORTED', `${storage.name}: a block device's size is fixed`);
            }
            if (newSize <= 0)
              throw new PlatterError('EINVAL', `${storage.name}: a raw image needs at least 1 byte`);
            await storage.truncate(newSize);
          },
        }
      : undefined,
  };
  return { disk };
}

async function create(ctx: CreateContext): Promise<void> {
  const name = ctx.storage.name;
  for (const k of Object.keys(ctx.options)) {
    if (k !== 'preallocation') {
      throw new PlatterError('EINVAL', `raw: unknown option '${k}' (raw knows: preallocation)`);
    }
  }
  const prealloc = ctx.options.preallocation ?? 'off';
  if (!(PREALLOCATION as readonly string[]).includes(prealloc)) {
    throw new PlatterError(
      'EINVAL',
      `raw: preallocation=${prealloc} is not supported (use ${PREALLOCATION.join(', ')})`,
    );
  }
  if (ctx.size <= 0) throw new PlatterError('EINVAL', `${name}: a raw image needs a size of at least 1 byte`);
  const storage = ctx.storage;
  await storage.truncate(ctx.size);
  switch (prealloc) {
    case 'off':
      break;
    case 'falloc':
      // Reserve the space; without fallocate the bytes are written instead.
      if (storage.allocate) await storage.allocate(0, ctx.size);
      else await writeZerosTo(storage, 0, ctx.size);
      break;
    case 'full':
      await writeZerosTo(storage, 0, ctx.size);
      break;
  }
}

export const raw: FormatDriver = {
  name: 'raw',
  probe,
  open,
  create,
  capabilities: { create: true, write: true, backing: false, compression: false, snapshots: false },
};
