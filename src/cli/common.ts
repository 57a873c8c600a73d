/** Options and helpers shared by many commands. */
import { statSync } from 'node:fs';
import { resolve } from 'node:path';
import type { Command } from 'commander';
import type { Disk } from '../core/disk.js';
import { PlatterError } from '../core/errors.js';
import { setRandomSource } from '../core/random.js';
import { openImage } from '../formats/open.js';
import { setIoBufferAllocator } from '../ops/buffers.js';
import { readUrandom } from '../storage/fs-calls.js';
import { native } from '../storage/native.js';
import { collect, parseKeyValues } from './args.js';
import type { CliContext } from './context.js';
import { makeProgress, type ProgressRenderer, progressMode } from './progress.js';

// Page-aligned I/O buffers for the operations (ops/buffers.ts says why).
if (native.alignedMemory) setIoBufferAllocator((size) => native.alignedBuffer(size, 4096));
// Random ids from /dev/urandom (core/random.ts says why).
setRandomSource(readUrandom);

/** Adds `-p/--progress [json]` and `-q/--quiet`. */
export function withProgress(cmd: Command): Command {
  return cmd
    .option(
      '-p, --progress [mode]',
      'show progress on stderr (bar on a TTY, lines in a pipe; "json" for JSON lines)',
    )
    .option('-q, --quiet', 'print nothing but errors');
}

export function progressFor(
  ctx: CliContext,
  opts: { progress?: unknown; quiet?: boolean },
): ProgressRenderer {
  return makeProgress(ctx, progressMode(opts.progress, opts.quiet));
}

export interface OpenArgs {
  format?: string;
  forceShare?: boolean;
  /** --image-opts K=V: the format's options for opening (e.g. force=on). */
  imageOpts?: string[];
  /** false: the image alone, without its backing chain. */
  backing?: boolean;
}

/** Opens an image argument (path or URI) for a command. */
export function openArg(ctx: CliContext, path: string, args: OpenArgs, write = false): Promise<Disk> {
  return openImage(ctx.host, path, {
    format: args.format,
    readOnly: !write,
    forceShare: args.forceShare,
    options: parseKeyValues(args.imageOpts),
    backing: args.backing,
  });
}

/** Opens an image to read; a 0-byte image is refused (there is nothing to read). */
export async function openInput(ctx: CliContext, path: string, args: OpenArgs): Promise<Disk> {
  const disk = await openArg(ctx, path, args, false);
  if (disk.size === 0) {
    await disk.close();
    throw new PlatterError('EINVAL', `${path}: image is empty (virtual size 0 bytes)`);
  }
  return disk;
}

/** Closes disks, ignoring errors from closing (the first error of the command matters more). */
export async function closeAll(...disks: Array<Disk | undefined>): Promise<void> {
  for (const d of disks) await d?.close().catch(() => undefined);
}

/** Adds `--image-opts K=V` (repeatable): the format's options for opening the image, e.g. force=on. */
export function withImageOpts(cmd: Command): Command {
  return cmd.option('--image-opts <k=v,...>', 'options for opening the image, e.g. force=on', collect);
}

/** Adds `-U, --force-share` (read without taking locks). */
export function withForceShare(cmd: Command): Command {
  return cmd.option('-U, --force-share', 'open without taking locks (the image may change underneath)');
}

/** Are two paths one file (also through a symbolic or a hard link)? */
export function sameFile(a: string, b: string): boolean {
  if (resolve(a) === resolve(b)) return true;
  try {
    const x = statSync(a);
    const y = statSync(b);
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false; // one does not exist (yet)
  }
}
