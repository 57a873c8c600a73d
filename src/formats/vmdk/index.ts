/**
 * vmdk: VMware's virtual disk format ("Virtual Disk Format 1.1"), with QEMU's
 * block/vmdk.c as the interop reference.
 *
 * Reads and writes monolithicSparse, monolithicFlat, twoGbMaxExtentSparse,
 * twoGbMaxExtentFlat and streamOptimized; reads ZERO and VMFS extents, a
 * redundant grain directory, zeroed-grain GTEs and any grain size. Delta links
 * (parentFileNameHint + parentCID) are reported as the backing file; a parent
 * whose CID no longer matches is refused. Not supported: VMFSSPARSE/COWD,
 * SESPARSE and raw-device-mapping extents.
 *
 * Files: descriptor.ts (text descriptor), header.ts (sparse header, markers),
 * sparse.ts (grain directory/tables, grains, stream append), flat.ts (FLAT,
 * ZERO), table.ts (one Disk over the extents), image.ts (open), create.ts,
 * check.ts, resize.ts.
 */
import type { DiskFeatures } from '../../core/disk.js';
import type { FormatDriver } from '../driver.js';
import { checkImage } from './check.js';
import { createVmdk } from './create.js';
import { openVmdk, probeVmdk } from './image.js';
import { resizeImage } from './resize.js';
import { SparseExtent } from './sparse.js';

export const vmdk: FormatDriver = {
  name: 'vmdk',
  probe: probeVmdk,
  async open(storage, ctx) {
    const { image, disk, backing } = await openVmdk(storage, ctx);
    const writable = !ctx.readOnly;
    const allSparse = image.table.placed.every(
      (p) => p.extent instanceof SparseExtent && !p.extent.compressed,
    );
    const features: DiskFeatures = {
      check: (opts) => checkImage(image, opts),
      repairs: true,
      resize: writable ? (size, opts) => resizeImage(image, size, opts) : undefined,
      setBacking: writable ? (b) => image.setBacking(b) : undefined,
      makeEmpty:
        writable && allSparse
          ? async () => {
              for (const s of image.sparse) await s.makeEmpty();
              await image.relinkParent();
            }
          : undefined,
    };
    return { disk: { ...disk, features }, backing };
  },
  create: createVmdk,
  capabilities: { create: true, write: true, backing: true, compression: true, snapshots: false },
};
