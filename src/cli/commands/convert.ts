/**
 * platter convert [-f FMT] -O FMT [-o K=V,...] [-c] [-p] [--verify] [--force] [-U] SRC DST
 *
 * The destination appears only when it is complete: the image is created as
 * DST.partial, filled, closed and then renamed to DST (no fsync, as qemu-img). Any failure,
 * Ctrl-C included, removes DST.partial; a crash or SIGKILL leaves it behind,
 * visibly incomplete. An image of several files (split sets, VMDK extents)
 * names its other files after the main one, so it cannot be renamed: it is
 * created as DST directly and all its files are removed on failure. A block
 * device or an nbd:// export is written in place (zeros written where the source
 * has zeros, flushed at the end) and needs --force like any existing DST.
 */
import { statSync } from 'node:fs';
import type { Command } from 'commander';
import type { Disk } from '../../core/disk.js';
import { isPlatterError, PlatterError } from '../../core/errors.js';
import { byName } from '../../formats/index.js';
import { createImage, openImage } from '../../formats/open.js';
import { convertDisk } from '../../ops/convert.js';
import { collect, parseKeyValues } from '../args.js';
import {
  closeAll,
  openInput,
  progressFor,
  sameFile,
  withForceShare,
  withImageOpts,
  withProgress,
} from '../common.js';
import type { CliContext } from '../context.js';
import { printJson, printLines } from '../output.js';
import type { RegisterCommand } from './index.js';

interface ConvertOpts {
  imageOpts?: string[];
  format?: string;
  outputFormat: string;
  options?: string[];
  compress?: boolean;
  progress?: unknown;
  quiet?: boolean;
  verify?: boolean;
  force?: boolean;
  forceShare?: boolean;
  json?: boolean;
}

const filesOf = (d: Disk): string[] => [...new Set(d.storages.flatMap((s) => s.files ?? [s.name]))];

const isUri = (p: string): boolean => /^[a-z][a-z0-9+.-]*:\/\//i.test(p);

/** A block device or an NBD export is written in place: it cannot be renamed or removed, and it is not zero. */
function inPlace(p: string): boolean {
  if (isUri(p)) return true;
  try {
    return statSync(p).isBlockDevice();
  } catch {
    return false;
  }
}

/**
 * --force replaces an existing DST only at the end (rename); if another program
 * holds it (qemu, a running VM), say so now rather than after the whole copy.
 * Only a lock conflict counts here: anything else (no write permission on a file
 * the rename may still replace) is left to the rename.
 */
async function refuseIfHeld(ctx: CliContext, path: string): Promise<void> {
  if (!(await ctx.host.exists(path))) return;
  try {
    const held = await ctx.host.open(path, { write: true });
    await held.close();
  } catch (e) {
    if (isPlatterError(e) && e.code === 'ELOCKED') throw e;
  }
}

async function convert(ctx: CliContext, srcPath: string, dstPath: string, o: ConvertOpts): Promise<number> {
  const driver = byName(o.outputFormat);
  if (!driver.create)
    throw new PlatterError('EUNSUPPORTED', `${driver.name}: platter cannot create this format`);
  if (o.compress && !driver.capabilities.compression) {
    throw new PlatterError(
      'EUNSUPPORTED',
      `${driver.name}: this format cannot be compressed (-c); leave out -c`,
    );
  }
  const options = parseKeyValues(o.options);
  if (!isUri(dstPath) && sameFile(srcPath, dstPath)) {
    throw new PlatterError('EINVAL', `${dstPath}: the destination is the source`);
  }
  if (!o.force && isUri(dstPath)) {
    // An export always exists: like a device, it is overwritten only when asked (qemu-img: -n).
    throw new PlatterError(
      'EEXIST',
      `${dstPath}: an NBD export is written in place (use --force to overwrite it)`,
    );
  }
  if (!o.force && (await ctx.host.exists(dstPath))) {
    throw new PlatterError('EEXIST', `${dstPath}: already exists (use --force to overwrite)`);
  }
  const src = await openInput(ctx, srcPath, {
    format: o.format,
    forceShare: o.forceShare,
    imageOpts: o.imageOpts,
  });
  if (!isUri(dstPath) && filesOf(src).some((f) => !isUri(f) && sameFile(f, dstPath))) {
    await closeAll(src);
    throw new PlatterError('EINVAL', `${dstPath}: is a file of the source (an extent or a backing file)`);
  }
  if (o.force && !inPlace(dstPath))
    await refuseIfHeld(ctx, dstPath).catch(async (e) => {
      await closeAll(src);
      throw e;
    });
  const progress = progressFor(ctx, o);
  let dst: Disk | undefined;
  let created: string[] = [];
  const direct = inPlace(dstPath);
  const openOpts: Record<string, string> = o.compress ? { compress: 'on' } : {};
  // A new destination is used only once it is complete (renamed into place, or removed):
  // a format's own flushes (VHDX's log ordering) buy nothing there, as with qemu-img's
  // cache=unsafe for convert. A device or an export written in place keeps them.
  if (!direct) openOpts.cache = 'unsafe';
  let target = direct ? dstPath : `${dstPath}.partial`;
  try {
    await createImage(ctx.host, target, {
      format: driver.name,
      size: src.size,
      options,
      force: true, // DST.partial: what an interrupted convert left
      forceSiblings: o.force ?? false, // named after DST: they may be anyone's files
      keep: filesOf(src),
      flush: direct,
    });
    if (!direct) created = [target];
    dst = await openImage(ctx.host, target, { format: driver.name, readOnly: false, options: openOpts });
    if (!direct) created = filesOf(dst);
    if (created.length > 1) {
      // Several files: the others are named after the main one, so make it under its real name.
      await closeAll(dst);
      dst = undefined;
      for (const f of created) await ctx.host.remove(f);
      created = [];
      target = dstPath;
      await createImage(ctx.host, target, {
        format: driver.name,
        size: src.size,
        options,
        force: o.force,
        keep: filesOf(src),
        flush: direct,
      });
      created = [target];
      dst = await openImage(ctx.host, target, { format: driver.name, readOnly: false, options: openOpts });
      created = filesOf(dst);
    }
    // No fsync at the end, like qemu-img convert and cp: a killed process loses nothing (the page
    // cache keeps what was written) and DST.partial is renamed only after the last write.
    const r = await convertDisk(src, dst, {
      signal: ctx.signal,
      onProgress: progress.onProgress,
      verify: o.verify,
      // A new file reads zeros; a device or an export keeps its old bytes, so zeros are written there.
      dstZeroed: !direct,
      flush: direct,
    });
    await dst.close();
    dst = undefined;
    if (target !== dstPath) await ctx.host.rename(target, dstPath);
    progress.finish();
    if (o.json) {
      printJson(ctx, {
        source: srcPath,
        destination: dstPath,
        format: driver.name,
        virtualSize: src.size,
        bytesRead: r.bytesRead,
        bytesWritten: r.bytesWritten,
        ...(r.verified ? { verified: r.verified } : {}),
      });
    } else if (r.verified && !o.quiet) {
      printLines(ctx, [`Verified: ${r.verified.algorithm} ${r.verified.source}`]);
    }
    return 0;
  } catch (e) {
    progress.finish();
    await closeAll(dst);
    for (const f of created) await ctx.host.remove(f).catch(() => undefined);
    if (isPlatterError(e) && e.code === 'ECANCELED') {
      throw new PlatterError('ECANCELED', `interrupted: ${dstPath} was not created`);
    }
    // DST.partial is ours: the user named DST.
    if (isPlatterError(e) && target !== dstPath && e.message.startsWith(`${target}:`))
      throw new PlatterError(e.code, `${dstPath}${e.message.slice(target.length)}`);
    throw e;
  } finally {
    await closeAll(src);
  }
}

export const registerConvert: RegisterCommand = (program: Command, ctx, run) => {
  withImageOpts(
    withForceShare(
      withProgress(
        program
          .command('convert')
          .description(
            'copy the virtual content of an image into a new image, keeping holes and zeros sparse',
          )
          .argument('<src>', 'source image')
          .argument('<dst>', 'destination image (created)')
          .option('-f, --format <fmt>', 'source format (probed if absent)')
          .requiredOption('-O, --output-format <fmt>', 'destination format')
          .option('-o, --options <k=v,...>', 'destination format options', collect)
          .option('-c, --compress', 'compress the destination (formats that can)')
          .option('--verify', 'hash source and destination and compare them')
          .option('--force', 'overwrite an existing destination')
          .option('--json', 'print the result as JSON'),
      ),
    ),
  ).action(run((src: string, dst: string, o: ConvertOpts) => convert(ctx, src, dst, o)));
};
