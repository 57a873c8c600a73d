/**
 * platter check [--json] [-r leaks|all] [-f FMT] [-U] IMAGE
 *
 * Checks the metadata of the image's own layer (not its backing files), like
 * qemu-img check. Exit status: 0 clean, 1 could not check, 2 corruptions,
 * 3 leaked clusters only (after a repair: what is left).
 */
import type { Command } from 'commander';
import type { CheckResult, Disk } from '../../core/disk.js';
import { invalid, isPlatterError } from '../../core/errors.js';
import { checkDisk, checkExitStatus, type RepairMode } from '../../ops/check.js';
import { closeAll, openArg, withForceShare, withImageOpts } from '../common.js';
import type { CliContext } from '../context.js';
import { printJson, printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface CheckOpts {
  imageOpts?: string[];
  format?: string;
  json?: boolean;
  quiet?: boolean;
  repair?: string;
  forceShare?: boolean;
}

function report(r: CheckResult): string[] {
  const lines = [...r.messages];
  if (r.repaired && r.repaired.corruptions + r.repaired.leaks > 0) {
    lines.push(
      '',
      'The following inconsistencies were found and repaired:',
      '',
      `    ${r.repaired.leaks} leaked clusters`,
      `    ${r.repaired.corruptions} corruptions`,
      '',
    );
  }
  if (r.corruptions === 0 && r.leaks === 0) lines.push('No errors were found on the image.');
  if (r.corruptions > 0) {
    lines.push(
      '',
      `${r.corruptions} errors were found on the image.`,
      'Data may be corrupted, or further writes to the image may corrupt it.',
    );
  }
  if (r.leaks > 0) {
    lines.push(
      '',
      `${r.leaks} leaked clusters were found on the image.`,
      'This means waste of disk space, but no harm to data.',
    );
  }
  const end = r.details?.imageEndOffset;
  if (typeof end === 'number') lines.push(`Image end offset: ${end}`);
  return lines;
}

async function check(ctx: CliContext, image: string, o: CheckOpts): Promise<number> {
  const repair = (o.repair ?? 'none') as RepairMode;
  if (!['none', 'leaks', 'all'].includes(repair)) throw invalid(`-r ${o.repair}: expected leaks or all`);
  let disk: Disk;
  try {
    const args = { format: o.format, forceShare: o.forceShare, imageOpts: o.imageOpts, backing: false };
    disk = await openArg(ctx, image, args, repair !== 'none');
  } catch (e) {
    // Metadata too broken to open is what check is for: the corruption's exit status (2), not 1.
    if (!(isPlatterError(e) && e.code === 'ECORRUPT')) throw e;
    ctx.stderr.write(`platter: error: ${e.message}\n`);
    return 2;
  }
  try {
    const r = await checkDisk(disk, repair);
    if (o.json) {
      const { format } = await disk.info();
      printJson(ctx, { filename: image, format, ...r });
    } else if (!o.quiet) printLines(ctx, report(r));
    return checkExitStatus(r);
  } finally {
    await closeAll(disk);
  }
}

export const registerCheck: RegisterCommand = (program: Command, ctx, run) => {
  withImageOpts(
    withForceShare(
      program
        .command('check')
        .description(
          'check the image metadata for corruptions and leaked clusters (exit 2: corrupt, 3: leaks)',
        )
        .argument('<image>', 'image file')
        .option('-f, --format <fmt>', 'image format (probed if absent)')
        .option('-r, --repair <mode>', 'repair: leaks (leaked clusters only) or all')
        .option('--json', 'print the result as JSON')
        .option('-q, --quiet', 'print nothing but errors'),
    ),
  ).action(run((image: string, o: CheckOpts) => check(ctx, image, o)));
};
