/**
 * platter commit [-f FMT] [-p] [-q] IMAGE
 *
 * Writes the overlay's own data into its backing file, then empties the
 * overlay (the chain reads as before).
 */
import type { Command } from 'commander';
import type { Disk } from '../../core/disk.js';
import { PlatterError } from '../../core/errors.js';
import { openImage } from '../../formats/open.js';
import { commitDisk } from '../../ops/commit.js';
import { resizeImage } from '../../ops/resize.js';
import { closeAll, progressFor, withProgress } from '../common.js';
import type { CliContext } from '../context.js';
import { printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface CommitOpts {
  format?: string;
  progress?: unknown;
  quiet?: boolean;
}

async function commit(ctx: CliContext, image: string, o: CommitOpts): Promise<number> {
  // The overlay alone, so its backing file can be opened for writing.
  const top = await openImage(ctx.host, image, { format: o.format, readOnly: false, backing: false });
  let base: Disk | undefined;
  try {
    const { backing } = await top.info();
    if (!backing) throw new PlatterError('EINVAL', `${image}: has no backing file to commit into`);
    const path = ctx.host.resolve(image, backing.name);
    const openBase = () => openImage(ctx.host, path, { format: backing.format, readOnly: false });
    base = await openBase();
    if (base.size < top.size) {
      // A backing file smaller than the overlay grows to its size first, as qemu-img commit does.
      await base.close();
      base = undefined;
      await resizeImage(openBase, String(top.size));
      base = await openBase();
    }
    const progress = progressFor(ctx, o);
    try {
      await commitDisk(top, base, { signal: ctx.signal, onProgress: progress.onProgress });
    } finally {
      progress.finish();
    }
  } finally {
    await closeAll(top, base);
  }
  if (!o.quiet) printLines(ctx, ['Image committed.']);
  return 0;
}

export const registerCommit: RegisterCommand = (program: Command, ctx, run) => {
  withProgress(
    program
      .command('commit')
      .description("write an overlay's data into its backing file, then empty the overlay")
      .argument('<image>', 'the overlay image')
      .option('-f, --format <fmt>', 'image format (probed if absent)'),
  ).action(run((image: string, o: CommitOpts) => commit(ctx, image, o)));
};
