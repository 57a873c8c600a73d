/** The node:fs-backed Host: how formats and operations reach files and URIs. */
import { constants, type Stats } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { PlatterError } from '../core/errors.js';
import type { Host, OpenMode, Storage } from '../core/storage.js';
import { nbdUriOpeners } from '../nbd/client.js';
import { hostError } from './errors.js';
import { openFile } from './file.js';
import { fsLstat, fsRemove, fsRename, fsStat } from './fs-calls.js';
import { isFirstSegment, openSplit } from './split.js';

/** URI schemes handled by other Storage kinds (nbd/ registers itself here). */
export const uriOpeners = new Map<string, (uri: string, mode: OpenMode) => Promise<Storage>>(nbdUriOpeners);

export const nodeHost: Host = {
  async open(path, mode) {
    const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(path)?.[1]?.toLowerCase();
    if (scheme) {
      const opener = uriOpeners.get(scheme);
      if (!opener) throw new PlatterError('EINVAL', `${path}: unsupported URI scheme '${scheme}'`);
      return opener(path, mode);
    }
    // NAME.000 / NAME.001: the whole split set NAME.001, NAME.002, … as one Storage.
    if (isFirstSegment(path)) return openSplit(path, mode);
    return openFile(path, mode);
  },
  async create(path, options) {
    // An NBD export already exists: "creating" it means opening it for writing.
    if (/^nbds?(\+unix)?:\/\//i.test(path)) return nodeHost.open(path, { write: true, lock: options.lock });
    let st: Stats | undefined;
    try {
      st = await fsStat(path);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw hostError(e, path);
    }
    if (st && !options.force) {
      throw new PlatterError('EEXIST', `${path}: already exists (use --force to overwrite)`);
    }
    if (st?.isDirectory()) throw new PlatterError('EINVAL', `${path}: is a directory, not an image`);
    const mode = { write: true, lock: options.lock };
    // A block device is written in place, never truncated; a file is emptied
    // only after its lock is taken (never under another program's feet).
    if (st?.isBlockDevice()) return openFile(path, mode, { flags: constants.O_RDWR });
    const flags = constants.O_RDWR | constants.O_CREAT | (st ? 0 : constants.O_EXCL);
    return openFile(path, mode, { flags, truncate: !!st });
  },
  async exists(path) {
    try {
      await fsLstat(path);
      return true;
    } catch {
      return false;
    }
  },
  async remove(path) {
    try {
      await fsRemove(path);
    } catch (e) {
      throw hostError(e, path, 'remove');
    }
  },
  resolve(base, name) {
    if (isAbsolute(name) || /^[a-z][a-z0-9+.-]*:\/\//i.test(name)) return name;
    return resolve(dirname(base), name);
  },
  async rename(from, to) {
    // Replacing an image: never a device node, and never one another process
    // holds (its lock is taken, as a writer's, for the moment of the rename).
    let st: Stats | undefined;
    try {
      st = await fsStat(to);
    } catch {
      st = undefined;
    }
    if (st?.isBlockDevice()) {
      throw new PlatterError(
        'EINVAL',
        `${to}: is a block device; it cannot be replaced by a file (write to it directly)`,
      );
    }
    const held = st?.isFile()
      ? await openFile(to, { write: true }, { flags: constants.O_RDONLY })
      : undefined;
    try {
      await fsRename(from, to);
    } catch (e) {
      throw hostError(e, from, `rename to ${to}`);
    } finally {
      await held?.close();
    }
  },
};
