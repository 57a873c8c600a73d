/**
 * vhdx: Microsoft's VHDX (Hyper-V, [MS-VHDX]). Dynamic, fixed and differencing
 * disks; 512 and 4096-byte logical sectors; block sizes 1-256 MiB; all block
 * states; the log is replayed on writable opens and read through on read-only
 * ones; metadata changes go through the log.
 *
 * Files: layout.ts (identifier, headers, region table), metadata.ts, bat.ts,
 * log.ts, image.ts (the open image), create.ts; crc32c.ts, guid.ts.
 * Open options: dense=on writes zeros into new blocks; the generic cache=unsafe
 * (formats/open.ts) skips the log's flushes (a destination renamed into place
 * when complete, as qemu-img convert does).
 * parent_linkage is compared with the parent's DataWriteGuid by check (a
 * mismatch does not stop an open: platter's own commit changes the parent).
 * Not done: volume_path locators are not followed; user metadata is ignored.
 */
import type { DiskImpl } from '../../core/disk.js';
import { isPlatterError, unsupported } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import type { FormatDriver, OpenContext, OpenedImage } from '../driver.js';
import { createVhdx, locatorPaths, parentLocator } from './create.js';
import { guidText } from './guid.js';
import { VhdxImage } from './image.js';

async function probe(storage: Storage): Promise<number> {
  try {
    if ((await storage.size()) < 8) return 0;
    const b = new Uint8Array(8);
    await storage.read(b, 0);
    return new TextDecoder().decode(b) === 'vhdxfile' ? 100 : 0;
  } catch {
    return 0;
  }
}

/** Converts a locator path (backslashes) into one the host resolves. */
function hostPath(p: string): string {
  if (p.startsWith('\\\\?\\')) {
    const rest = p.slice(4);
    return /^[A-Za-z]:\\/.test(rest) ? rest.replaceAll('\\', '/') : `/${rest.replaceAll('\\', '/')}`;
  }
  return p.replaceAll('\\', '/');
}

async function findParent(img: VhdxImage, ctx: OpenContext): Promise<string | undefined> {
  const e = img.md.parent?.entries;
  if (!e) return undefined;
  const candidates = ['relative_path', 'absolute_win32_path']
    .map((k) => e.get(k))
    .filter((x): x is string => !!x)
    .map(hostPath);
  for (const c of candidates) {
    if (await ctx.host.exists(ctx.host.resolve(img.file, c))) return c;
  }
  return candidates[0];
}

async function open(storage: Storage, ctx: OpenContext): Promise<OpenedImage> {
  let dense = ctx.options.dense === 'on';
  if (!dense && !ctx.readOnly && storage.allocatedSize) {
    dense = (await storage.allocatedSize()) >= (await storage.size());
  }
  const img = await VhdxImage.open(storage, {
    readOnly: ctx.readOnly,
    dense,
    unsafe: ctx.cache === 'unsafe',
    ctx,
  });
  const parentName = img.hasParent ? await findParent(img, ctx) : undefined;
  const backing = parentName ? { name: parentName, format: 'vhdx' } : undefined;
  if (parentName) {
    img.parentGuid = async () => {
      try {
        // Only the header is read, so no lock: commit holds the parent open for writing meanwhile.
        const ps = await ctx.host.open(ctx.host.resolve(img.file, parentName), {
          write: false,
          lock: 'none',
        });
        try {
          return guidText((await VhdxImage.open(ps, { readOnly: true })).header.dataWriteGuid);
        } finally {
          await ps.close();
        }
      } catch (e) {
        if (isPlatterError(e)) return undefined; // missing, locked or not VHDX: nothing to compare with
        throw e;
      }
    };
  }
  const writable = !ctx.readOnly;
  const disk: DiskImpl = {
    size: img.md.size,
    // The sector: a differencing disk keeps sector bitmaps (copy-on-write per sector),
    // and any block takes partial writes (info still shows the block size).
    granularity: img.md.logicalSectorSize,
    storages: [storage],
    read: (buf, offset) => img.read(buf, offset),
    write: writable ? (buf, offset) => img.write(buf, offset) : undefined,
    writeZeroes: writable ? (offset, length) => img.writeZeroes(offset, length) : undefined,
    extents: (offset, length) => img.extents(offset, length),
    hostSpans: (offset, length, purpose) => img.hostSpans(offset, length, purpose),
    flush: () => img.flush(),
    close: () => img.close(),
    info: async () => img.info(backing),
    features: img.features(
      writable
        ? {
            resize: (n, o) => img.resize(n, o.shrink),
            makeEmpty: () => img.makeEmpty(),
            setBacking: async (b) => {
              if (!b) return img.setParent(null);
              if (b.format && b.format !== 'vhdx')
                throw unsupported(`${img.file}: a VHDX parent must be a VHDX image (got ${b.format})`);
              const resolved = ctx.host.resolve(img.file, b.name);
              const ps = await ctx.openSibling(b.name);
              let guid: string;
              try {
                const parent = await VhdxImage.open(ps, { readOnly: true });
                guid = guidText(parent.header.dataWriteGuid);
              } finally {
                await ps.close();
              }
              const p = locatorPaths(img.file, b.name, resolved);
              await img.setParent(parentLocator(guid, p.relative, p.absolute));
            },
          }
        : {},
    ),
  };
  return { disk, backing };
}

export const vhdx: FormatDriver = {
  name: 'vhdx',
  probe,
  open,
  create: createVhdx,
  capabilities: { create: true, write: true, backing: true, compression: false, snapshots: false },
};
