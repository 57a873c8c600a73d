/**
 * check of an open VMDK: every sparse extent's grain directory and tables (GTs past the end of
 * the file, GTEs past the end or inside the metadata, grains that overlap, GT
 * and redundant GT that disagree). `-r all` repairs what can be repaired
 * safely (see SparseExtent.check); leaks are not tracked (VMDK has no
 * refcounts; a leaked grain only wastes space).
 */
import type { CheckResult } from '../../core/disk.js';
import type { VmdkImage } from './image.js';

export async function checkImage(
  image: VmdkImage,
  opts: { repair: 'none' | 'leaks' | 'all' },
): Promise<CheckResult> {
  const messages: string[] = [];
  let allocatedGrains = 0;
  let repaired = 0;
  for (const s of image.sparse) {
    const r = await s.check(opts.repair === 'all');
    messages.push(...r.messages);
    allocatedGrains += r.allocatedGrains;
    repaired += r.repaired;
  }
  if (repaired > 0) await image.table.flush();
  return {
    corruptions: messages.length,
    leaks: 0,
    messages,
    ...(opts.repair === 'all' ? { repaired: { corruptions: repaired, leaks: 0 } } : {}),
    details: { allocatedGrains },
  };
}
