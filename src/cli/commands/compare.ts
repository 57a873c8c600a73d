/**
 * platter compare [-f FMT] [-F FMT] [--all] [--json] [-p] [-U] A B
 *
 * Exit 0 identical, 1 different, 2 error (like qemu-img compare). Text:
 * `Images are identical.` or `Content mismatch at offset N!` (N rounded down
 * to its 512-byte sector); with --all one line per differing range. Images of
 * different sizes print `Warning: Image size mismatch!` first when the
 * compare reaches the longer one's tail, as qemu-img does, and compare equal
 * when that tail reads as zeros.
 */
import type { Command } from 'commander';
import { compareDisks } from '../../ops/compare.js';
import { closeAll, openInput, progressFor, withForceShare, withImageOpts, withProgress } from '../common.js';
import type { CliContext } from '../context.js';
import { printJson, printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface CompareOpts {
  imageOpts?: string[];
  format?: string;
  secondFormat?: string;
  all?: boolean;
  json?: boolean;
  quiet?: boolean;
  progress?: unknown;
  forceShare?: boolean;
}

async function compare(ctx: CliContext, pathA: string, pathB: string, o: CompareOpts): Promise<number> {
  const a = await openInput(ctx, pathA, {
    format: o.format,
    forceShare: o.forceShare,
    imageOpts: o.imageOpts,
  });
  let b: Awaited<ReturnType<typeof openInput>> | undefined;
  const progress = progressFor(ctx, o);
  try {
    b = await openInput(ctx, pathB, {
      format: o.secondFormat,
      forceShare: o.forceShare,
      imageOpts: o.imageOpts,
    });
    const r = await compareDisks(a, b, { all: o.all, signal: ctx.signal, onProgress: progress.onProgress });
    progress.finish();
    if (o.json) {
      printJson(ctx, {
        identical: r.identical,
        sizeA: r.sizeA,
        sizeB: r.sizeB,
        ...(r.firstMismatch !== undefined ? { firstMismatch: r.firstMismatch } : {}),
        ...(r.ranges ? { ranges: r.ranges } : {}),
      });
    } else if (!o.quiet) {
      const lines: string[] = [];
      // qemu-img warns once the compare reaches the longer image's tail: not when
      // the first difference lies in the part both images have.
      const common = Math.min(r.sizeA, r.sizeB);
      const inTail = r.ranges !== undefined || r.firstMismatch === undefined || r.firstMismatch >= common;
      if (r.sizeA !== r.sizeB && inTail) lines.push('Warning: Image size mismatch!');
      if (r.identical) lines.push('Images are identical.');
      else if (r.ranges)
        for (const x of r.ranges) lines.push(`Content mismatch at offset ${x.offset}! (${x.length} bytes)`);
      else lines.push(`Content mismatch at offset ${r.firstMismatch}!`);
      printLines(ctx, lines);
    }
    return r.identical ? 0 : 1;
  } finally {
    progress.finish();
    await closeAll(a, b);
  }
}

export const registerCompare: RegisterCommand = (program: Command, ctx, run) => {
  withImageOpts(
    withForceShare(
      withProgress(
        program
          .command('compare')
          .description('compare the virtual contents of two images (exit 0 same, 1 different, 2 error)')
          .argument('<a>', 'first image')
          .argument('<b>', 'second image')
          .option('-f, --format <fmt>', 'format of the first image')
          .option('-F, --second-format <fmt>', 'format of the second image')
          .option('--all', 'list every differing range, not only the first')
          .option('--json', 'print JSON'),
      ),
    ),
  ).action(run((a: string, b: string, o: CompareOpts) => compare(ctx, a, b, o), { errorExit: 2 }));
};
