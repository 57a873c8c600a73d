/**
 * raw: the bytes of the file are the bytes of the disk. Thin when the host file
 * is sparse (holes report as `zero`), thick with preallocation=falloc|full.
 * TODO(storage): preallocation, split sets.
 */
import type { DiskImpl } from '../../core/disk.js';
import { PlatterError } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import type { CreateContext, FormatDriver, OpenContext, OpenedImage } from '../driver.js';

async function open(storage: Storage, ctx: OpenContext): Promise<OpenedImage> {
  const size = await storage.size();
  const disk: DiskImpl = {
    size,
    storages: [storage],
    read: (buf, offset) => storage.read(buf, offset),
    write: ctx.readOnly ? undefined : (buf, offset) => storage.write(buf, offset),
    extents: storage.extents
      ? async (offset, length) =>
          (await storage.extents!(offset, length)).map((e) => ({
            offset: e.offset,
            length: e.length,
            status: e.kind === 'hole' ? ('zero' as const) : ('data' as const),
            depth: 0,
          }))
      : undefined,
    flush: () => storage.flush(),
    close: () => storage.close(),
    info: async () => ({ format: 'raw' }),
  };
  return { disk };
}

async function create(ctx: CreateContext): Promise<void> {
  for (const k of Object.keys(ctx.options)) {
    if (k !== 'preallocation') throw new PlatterError('EINVAL', `raw: unknown option '${k}'`);
  }
  await ctx.storage.truncate(ctx.size);
}

export const raw: FormatDriver = {
  name: 'raw',
  probe: async () => 1,
  open,
  create,
  capabilities: { create: true, write: true, backing: false, compression: false, snapshots: false },
};
