/**
 * When `platter rescue` takes the synchronous I/O path (storage/sync-file.ts):
 * a local file or block device rescued into a raw file or device. Anything else
 * (an NBD source, a split set, another destination format) goes through the
 * Storage and the Disk. PLATTER_RESCUE_ASYNC=1 turns the path off.
 */
import type { Disk } from '../../core/disk.js';
import type { Storage } from '../../core/storage.js';
import type { FileStorage } from '../../storage/file.js';
import { type SyncFileIo, syncFileIo } from '../../storage/sync-file.js';

/** A FileStorage over exactly one host file (not a split set, not NBD). */
function oneFile(s: Storage | undefined): (FileStorage & { files: [string] }) | undefined {
  const f = s as Partial<FileStorage> | undefined;
  return f && typeof f.direct === 'boolean' && typeof f.sectorSize === 'number' && f.files?.length === 1
    ? (s as FileStorage & { files: [string] })
    : undefined;
}

/** The synchronous path for `src` → `dst`, or undefined when they are not one local file each and raw. */
export async function openRescueIo(src: Storage, dst: Disk): Promise<SyncFileIo | undefined> {
  if (process.env.PLATTER_RESCUE_ASYNC === '1') return undefined;
  const s = oneFile(src);
  const d = oneFile(dst.storages.length === 1 ? dst.storages[0] : undefined);
  if (!s || !d || (await dst.info()).format !== 'raw') return undefined;
  return syncFileIo(s.files[0], d.files[0], {
    direct: s.direct,
    sectorSize: s.sectorSize,
    isBlockDevice: s.isBlockDevice,
  });
}
