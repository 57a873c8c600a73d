/**
 * openImage(): probe (or take -f), open, follow the backing chain, stack.
 * createImage(): make a new image file with a driver's create().
 */
import { basename } from 'node:path';
import { stack } from '../core/chain.js';
import { type Disk, toDisk } from '../core/disk.js';
import { PlatterError } from '../core/errors.js';
import type { Host, Storage } from '../core/storage.js';
import { zeroDisk } from '../core/zeros.js';
import type { FormatDriver, OpenContext } from './driver.js';
import { byName, drivers } from './index.js';
import { probeView } from './probe-view.js';
import { knownSignature } from './signatures.js';

export interface OpenImageOptions {
  /** -f FMT; probed when absent. */
  format?: string;
  readOnly: boolean;
  /** -U: take no locks. */
  forceShare?: boolean;
  /** -o options passed to the driver's open. */
  options?: Record<string, string>;
  /** false: do not open the backing chain (info of one layer, rebase -u). */
  backing?: boolean;
  /** Maximum chain length, as a guard against absurd chains. */
  maxDepth?: number;
}

/** Chooses the driver for a store; refuses to call a file raw when it carries another format's signature. */
export async function probe(store: Storage): Promise<FormatDriver> {
  const storage = await probeView(store);
  let best: FormatDriver | undefined;
  let bestScore = 0;
  for (const d of drivers) {
    const score = await d.probe(storage);
    if (score > bestScore) {
      best = d;
      bestScore = score;
    }
  }
  if (!best) throw new PlatterError('EFORMAT', `${storage.name}: unknown image format`);
  if (best.name === 'raw') {
    const sig = await knownSignature(storage);
    if (sig) {
      throw new PlatterError(
        'EFORMAT',
        `${storage.name}: looks like a ${sig} image, which platter cannot open; use -f raw to read it as raw bytes`,
      );
    }
  }
  return best;
}

export async function openImage(host: Host, path: string, opts: OpenImageOptions): Promise<Disk> {
  return openLayer(host, path, opts, new Set(), 0);
}

/** A path as the host names it from anywhere (resolved against its own directory). */
const absolute = (host: Host, path: string): string => host.resolve(path, basename(path));

/**
 * Opens the backing chain of an image about to be made at `path`, refusing a
 * chain that passes through `path` itself: the new image would replace a layer
 * of its own backing chain (without it, the chain's read lock on that layer
 * refuses the creation with a misleading "in use by another process").
 */
function openNewBacking(host: Host, path: string, backing: { name: string; format?: string }): Promise<Disk> {
  const self = absolute(host, path);
  const backingPath = host.resolve(path, backing.name);
  const opts = { format: backing.format, readOnly: true };
  return openLayer(host, backingPath, opts, new Set([self]), 0).catch((e) => {
    if (!(e instanceof LoopError && e.path === self)) throw e;
    throw new PlatterError(
      'EINVAL',
      `${path}: would be in its own backing chain (through ${backing.name}); an image cannot back itself`,
    );
  });
}

/** A backing file of the chain is missing (the message names the image that refers to it). */
export class BackingNotFound extends PlatterError {
  constructor(message: string) {
    super('ENOENT', message);
  }
}

/** A backing chain that reaches `path` a second time. */
class LoopError extends PlatterError {
  constructor(readonly path: string) {
    super('ECORRUPT', `${path}: corrupt image: backing chain loops back to ${path}`);
  }
}

async function openLayer(
  host: Host,
  path: string,
  opts: OpenImageOptions,
  seen: Set<string>,
  depth: number,
): Promise<Disk> {
  const maxDepth = opts.maxDepth ?? 256;
  if (depth > maxDepth)
    throw new PlatterError('ECORRUPT', `${path}: backing chain is longer than ${maxDepth} images`);
  if (seen.has(path)) throw new LoopError(path);
  seen.add(path);

  const lock = opts.forceShare ? 'none' : 'auto';
  const storage = await host.open(path, { write: !opts.readOnly, lock });
  try {
    const driver = opts.format ? byName(opts.format) : await probe(storage);
    const { cache = 'writeback', ...options } = opts.options ?? {};
    if (cache !== 'writeback' && cache !== 'unsafe') {
      throw new PlatterError('EINVAL', `cache=${cache}: expected writeback or unsafe`);
    }
    const ctx: OpenContext = {
      host,
      readOnly: opts.readOnly,
      forceShare: opts.forceShare ?? false,
      options,
      cache,
      openSibling: (name, o) => host.open(host.resolve(path, name), { write: !!o?.write, lock }),
    };
    const opened = await driver.open(storage, ctx);
    const top = toDisk(opened.disk, { name: path, readOnly: opts.readOnly });
    if (opts.backing === false || !opened.backing) return stack(top, zeroDisk(top.size));
    const backingPath = host.resolve(path, opened.backing.name);
    let below: Disk;
    try {
      below = await openLayer(
        host,
        backingPath,
        { ...opts, format: opened.backing.format, readOnly: true, options: {} },
        seen,
        depth + 1,
      );
    } catch (e) {
      await top.close();
      // This layer's own backing file is missing; one missing further down keeps its message.
      if (e instanceof PlatterError && e.code === 'ENOENT' && !(e instanceof BackingNotFound))
        throw new BackingNotFound(`${path}: backing file ${opened.backing.name} not found (${backingPath})`);
      throw e;
    }
    return stack(top, below);
  } catch (e) {
    await storage.close().catch(() => undefined);
    throw e;
  }
}

export interface CreateImageOptions {
  format: string;
  size?: number;
  options?: Record<string, string>;
  /** -b BACKING [-F FMT] */
  backing?: { name: string; format?: string };
  force?: boolean;
  /** Replace existing files that the format names after the image (VMDK extents); default: as `force`. */
  forceSiblings?: boolean;
  /** Files the new image must not replace, whatever `force` says (a conversion's source files). */
  keep?: readonly string[];
  /**
   * Flush the new image's file before returning (default true). convert's
   * DST.partial needs no durability before it is complete and renamed (qemu-img
   * convert does not sync at all); the sync costs 5-155 ms here.
   */
  flush?: boolean;
}

export async function createImage(host: Host, path: string, opts: CreateImageOptions): Promise<void> {
  const driver = byName(opts.format);
  if (!driver.create)
    throw new PlatterError('EUNSUPPORTED', `${opts.format}: platter cannot create this format`);
  if (opts.backing && !driver.capabilities.backing) {
    throw new PlatterError('EUNSUPPORTED', `${opts.format} images cannot have a backing file`);
  }
  let backing: { name: string; format: string; disk: Disk } | undefined;
  if (opts.backing) {
    const disk = await openNewBacking(host, path, opts.backing);
    const format = opts.backing.format ?? (await disk.info()).format;
    backing = { name: opts.backing.name, format, disk };
  }
  const size = opts.size ?? backing?.disk.size;
  if (size === undefined) throw new PlatterError('EINVAL', `${path}: a size is needed (or a backing file)`);
  const kept = new Set((opts.keep ?? []).map((f) => absolute(host, f)));
  const refuseKept = (p: string) => {
    if (kept.has(absolute(host, p)))
      throw new PlatterError('EINVAL', `${p}: is a file of the source; the new image may not replace it`);
  };
  refuseKept(path);
  const created: string[] = [path];
  const storage = await host.create(path, { force: opts.force });
  try {
    await driver.create({
      host,
      storage,
      size,
      options: opts.options ?? {},
      backing,
      createSibling: async (name) => {
        const p = host.resolve(path, name);
        refuseKept(p);
        const s = await host.create(p, { force: opts.forceSiblings ?? opts.force });
        created.push(p);
        return s;
      },
    });
    if (opts.flush ?? true) await storage.flush();
  } catch (e) {
    await storage.close().catch(() => undefined);
    for (const p of created) await host.remove(p).catch(() => undefined);
    throw e;
  } finally {
    await storage.close().catch(() => undefined);
    await backing?.disk.close();
  }
}
