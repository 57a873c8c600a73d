/**
 * platter resize [--shrink] [-f FMT] IMAGE [+|-]SIZE
 *
 * Grows the image (or, with --shrink, cuts an unallocated tail). A relative
 * size may start with '-': it is taken as the size, not an option.
 */
import type { Command } from 'commander';
import { openImage } from '../../formats/open.js';
import { resizeImage } from '../../ops/resize.js';
import type { CliContext } from '../context.js';
import { printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface ResizeOpts {
  format?: string;
  shrink?: boolean;
  quiet?: boolean;
}

async function resize(ctx: CliContext, image: string, sizeText: string, o: ResizeOpts): Promise<number> {
  const open = () => openImage(ctx.host, image, { format: o.format, readOnly: false });
  await resizeImage(open, sizeText, { shrink: o.shrink });
  if (!o.quiet) printLines(ctx, ['Image resized.']);
  return 0;
}

export const registerResize: RegisterCommand = (program: Command, ctx, run) => {
  program
    .command('resize')
    .description('change the virtual size of an image (SIZE, +SIZE or -SIZE)')
    .argument('<image>', 'image file')
    .argument('<size>', 'new size, or +SIZE / -SIZE relative to the current one')
    .option('-f, --format <fmt>', 'image format (probed if absent)')
    .option('--shrink', 'allow making the image smaller')
    .option('-q, --quiet', 'print nothing but errors')
    .allowUnknownOption()
    .action(run((image: string, size: string, o: ResizeOpts) => resize(ctx, image, size, o)));
};
