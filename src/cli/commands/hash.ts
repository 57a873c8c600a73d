/**
 * platter hash [-a md5,sha1,sha256,sha512] [--json] [-p] [-f FMT] [-U] IMAGE
 *
 * Hashes the virtual content (the same disk in any format hashes the same),
 * every algorithm in one read pass. Text: `SHA256 (IMAGE) = hex`, one line per
 * algorithm (the BSD tag format that `sha256sum -c` also reads).
 */
import type { Command } from 'commander';
import { hashDisk, parseAlgorithms } from '../../ops/hash.js';
import { closeAll, openInput, progressFor, withForceShare, withImageOpts, withProgress } from '../common.js';
import type { CliContext } from '../context.js';
import { printJson, printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface HashOpts {
  imageOpts?: string[];
  algorithms: string;
  format?: string;
  json?: boolean;
  quiet?: boolean;
  progress?: unknown;
  forceShare?: boolean;
}

async function hash(ctx: CliContext, image: string, o: HashOpts): Promise<number> {
  const algs = parseAlgorithms(o.algorithms);
  const disk = await openInput(ctx, image, {
    format: o.format,
    forceShare: o.forceShare,
    imageOpts: o.imageOpts,
  });
  const progress = progressFor(ctx, o);
  try {
    const digests = await hashDisk(disk, algs, { signal: ctx.signal, onProgress: progress.onProgress });
    progress.finish();
    if (o.json) printJson(ctx, { image, virtualSize: disk.size, hashes: digests });
    else if (!o.quiet)
      printLines(
        ctx,
        algs.map((a) => `${a.toUpperCase()} (${image}) = ${digests[a]}`),
      );
    return 0;
  } finally {
    progress.finish();
    await closeAll(disk);
  }
}

export const registerHash: RegisterCommand = (program: Command, ctx, run) => {
  withImageOpts(
    withForceShare(
      withProgress(
        program
          .command('hash')
          .description('hash the virtual content of an image (several algorithms in one pass)')
          .argument('<image>', 'image file, block device or nbd:// URI')
          .option('-a, --algorithms <list>', 'md5, sha1, sha256, sha512 (comma-separated)', 'sha256')
          .option('-f, --format <fmt>', 'image format (probed if absent)')
          .option('--json', 'print JSON'),
      ),
    ),
  ).action(run((image: string, o: HashOpts) => hash(ctx, image, o)));
};
