/**
 * Internal snapshots through disk.features.snapshots: list, create, apply,
 * delete. A format without them refuses with one error and touches nothing.
 */
import type { Disk, DiskFeatures, SnapshotInfo } from '../core/disk.js';
import { PlatterError } from '../core/errors.js';

export type SnapshotAction =
  | { op: 'list' }
  | { op: 'create'; name: string }
  | { op: 'apply'; name: string }
  | { op: 'delete'; name: string };

async function feature(disk: Disk): Promise<NonNullable<DiskFeatures['snapshots']>> {
  const s = disk.features.snapshots;
  if (s) return s;
  const { format } = await disk.info();
  throw new PlatterError('EUNSUPPORTED', `${format} images have no internal snapshots (${disk.name})`);
}

/** Runs one snapshot action; `list` returns the snapshots, the others return the list afterwards. */
export async function snapshotDisk(disk: Disk, action: SnapshotAction): Promise<SnapshotInfo[]> {
  const s = await feature(disk);
  switch (action.op) {
    case 'list':
      break;
    case 'create':
      await s.create(action.name);
      break;
    case 'apply':
      await s.apply(action.name);
      break;
    case 'delete':
      await s.delete(action.name);
      break;
    default: {
      const never: never = action;
      throw new Error(`internal error: ${JSON.stringify(never)}`);
    }
  }
  await disk.flush();
  return s.list();
}
