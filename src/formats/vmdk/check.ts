/**
 * check of an open VMDK: every sparse extent's grain directory and tables (GTs past the end of
 * the file, GTEs past the end or inside the metadata, grains that overlap, GT
 * and redundant GT that disagree). Repair is not offered: a report only.
 */
import type { CheckResult } from '../../core/disk.js';
import type { VmdkImage } from './image.js';

export async function checkImage(
  image: VmdkImage,
  _opts: { repair: 'none' | 'leaks' | 'all' },
): Promise<CheckResult> {
  const messages: string[] = [];
  let allocatedGrains = 0;
  for (const s of image.sparse) {
    const r = await s.check();
    messages.push(...r.messages);
    allocatedGrains += r.allocatedGrains;
  }
  return { corruptions: messages.length, leaks: 0, messages, details: { allocatedGrains } };
}
