/**
 * platter rebase [-u] -b BACKING [-F FMT] [-f FMT] [-p] [-q] IMAGE
 *
 * Changes the backing file. Safe mode first copies into the image every range
 * where the old and the new backing differ; -u only rewrites the name.
 * BACKING is resolved against the image's directory, as it is stored; an
 * empty BACKING ("") makes the image standalone.
 */
import type { Command } from 'commander';
import type { Disk } from '../../core/disk.js';
import { zeroDisk } from '../../core/zeros.js';
import { openImage } from '../../formats/open.js';
import { rebaseDisk } from '../../ops/rebase.js';
import { closeAll, progressFor, withProgress } from '../common.js';
import type { CliContext } from '../context.js';
import type { RegisterCommand } from './index.js';

interface RebaseOpts {
  backing: string;
  backingFormat?: string;
  format?: string;
  unsafe?: boolean;
  progress?: unknown;
  quiet?: boolean;
}

async function rebase(ctx: CliContext, image: string, o: RebaseOpts): Promise<number> {
  const top = await openImage(ctx.host, image, { format: o.format, readOnly: false, backing: false });
  let oldBelow: Disk | undefined;
  let newBelow: Disk | undefined;
  try {
    const newBacking = o.backing === '' ? null : { name: o.backing, format: o.backingFormat };
    if (!o.unsafe) {
      const { backing } = await top.info();
      oldBelow = backing
        ? await openImage(ctx.host, ctx.host.resolve(image, backing.name), {
            format: backing.format,
            readOnly: true,
          })
        : zeroDisk(top.size);
      newBelow = newBacking
        ? await openImage(ctx.host, ctx.host.resolve(image, newBacking.name), {
            format: newBacking.format,
            readOnly: true,
          })
        : zeroDisk(top.size);
      if (newBacking && !newBacking.format) newBacking.format = (await newBelow.info()).format;
    } else if (newBacking && !newBacking.format) {
      const probe = await openImage(ctx.host, ctx.host.resolve(image, newBacking.name), {
        readOnly: true,
        backing: false,
        forceShare: true,
      }).catch(() => undefined);
      if (probe) {
        newBacking.format = (await probe.info()).format;
        await probe.close();
      }
    }
    const progress = progressFor(ctx, o);
    try {
      await rebaseDisk(top, oldBelow ?? zeroDisk(top.size), newBelow ?? zeroDisk(top.size), newBacking, {
        unsafe: o.unsafe,
        signal: ctx.signal,
        onProgress: progress.onProgress,
      });
    } finally {
      progress.finish();
    }
  } finally {
    await closeAll(top, oldBelow, newBelow);
  }
  return 0;
}

export const registerRebase: RegisterCommand = (program: Command, ctx, run) => {
  withProgress(
    program
      .command('rebase')
      .description('change the backing file of an image (safe: keeps the content; -u: only the name)')
      .argument('<image>', 'the overlay image')
      .requiredOption('-b, --backing <file>', 'the new backing file ("" for none)')
      .option('-F, --backing-format <fmt>', 'format of the new backing file (probed if absent)')
      .option('-f, --format <fmt>', 'image format (probed if absent)')
      .option('-u, --unsafe', 'only rewrite the backing file name, copy nothing'),
  ).action(run((image: string, o: RebaseOpts) => rebase(ctx, image, o)));
};
