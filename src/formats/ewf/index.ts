/**
 * ewf: Expert Witness Compression Format (E01), after libewf's EWF document.
 *
 * Reads EnCase 1-7, linen, FTK and the old "ewf"/SMART layouts (compressed and
 * uncompressed chunks, multi-segment sets .E01 .E02 ... .EAA ...), checking
 * every section, table, volume, hash/digest/error2 and chunk checksum.
 * Writes the EnCase 6 layout (what `ewfacquire -f encase6` writes): header2 x2
 * + header + volume, sectors/table/table2 groups, data, error2, digest, hash,
 * done; see writer.ts. An image is written once, sequentially; an existing
 * E01 is never modified. Not supported: EWF2 (Ex01), logical evidence (L01),
 * encrypted images.
 */
import type { Storage } from '../../core/storage.js';
import type { FormatDriver, OpenContext, OpenedImage } from '../driver.js';
import { EVF_MAGIC } from './layout.js';
import { openSet, setDisk } from './reader.js';

async function probe(storage: Storage): Promise<number> {
  try {
    if ((await storage.size()) < 8) return 0;
    const b = new Uint8Array(8);
    await storage.read(b, 0);
    return EVF_MAGIC.every((x, i) => b[i] === x) ? 100 : 0;
  } catch {
    return 0;
  }
}

async function open(storage: Storage, ctx: OpenContext): Promise<OpenedImage> {
  const set = await openSet(storage, ctx);
  return { disk: setDisk(set) };
}

export const ewf: FormatDriver = {
  name: 'ewf',
  probe,
  open,
  capabilities: { create: false, write: false, backing: false, compression: true, snapshots: false },
};
