/**
 * checkDisk(disk, repair): metadata consistency of the top layer, through
 * disk.features.check (a format without one says so). The exit status
 * follows qemu-img check: 0 clean, 2 corruptions, 3 leaks only (1, could not
 * check, is any error thrown).
 */
import type { CheckResult, Disk } from '../core/disk.js';
import { PlatterError } from '../core/errors.js';

export type RepairMode = 'none' | 'leaks' | 'all';

export async function checkDisk(disk: Disk, repair: RepairMode = 'none'): Promise<CheckResult> {
  const check = disk.features.check;
  if (!check) {
    const { format } = await disk.info();
    throw new PlatterError(
      'EUNSUPPORTED',
      `${disk.name}: ${format} images have no metadata that could be checked`,
    );
  }
  if (repair !== 'none' && !disk.features.repairs) {
    const { format } = await disk.info();
    throw new PlatterError(
      'EUNSUPPORTED',
      `${disk.name}: platter cannot repair ${format} images (check without -r reports what is wrong)`,
    );
  }
  return check({ repair });
}

export function checkExitStatus(r: CheckResult): 0 | 2 | 3 {
  if (r.corruptions > 0) return 2;
  if (r.leaks > 0) return 3;
  return 0;
}
