/** The node:fs-backed Host: how formats and operations reach files and URIs. */
import { constants, promises as fsp } from 'node:fs';
import { dirname, isAbsolute, resolve } from 'node:path';
import { PlatterError } from '../core/errors.js';
import type { Host, OpenMode, Storage } from '../core/storage.js';
import { hostError } from './errors.js';
import { openFile } from './file.js';

/** URI schemes handled by other Storage kinds (nbd/ registers itself here). */
export const uriOpeners = new Map<string, (uri: string, mode: OpenMode) => Promise<Storage>>();

export const nodeHost: Host = {
  async open(path, mode) {
    const scheme = /^([a-z][a-z0-9+.-]*):\/\//i.exec(path)?.[1]?.toLowerCase();
    if (scheme) {
      const opener = uriOpeners.get(scheme);
      if (!opener) throw new PlatterError('EINVAL', `${path}: unsupported URI scheme '${scheme}'`);
      return opener(path, mode);
    }
    return openFile(path, mode);
  },
  async create(path, options) {
    if (!options.force && (await nodeHost.exists(path))) {
      throw new PlatterError('EEXIST', `${path}: already exists (use --force to overwrite)`);
    }
    const flags = constants.O_RDWR | constants.O_CREAT | (options.force ? constants.O_TRUNC : constants.O_EXCL);
    return openFile(path, { write: true, lock: options.lock }, flags);
  },
  async exists(path) {
    try {
      await fsp.lstat(path);
      return true;
    } catch {
      return false;
    }
  },
  async remove(path) {
    try {
      await fsp.rm(path, { force: true });
    } catch (e) {
      throw hostError(e, path, 'remove');
    }
  },
  resolve(base, name) {
    if (isAbsolute(name) || /^[a-z][a-z0-9+.-]*:\/\//i.test(name)) return name;
    return resolve(dirname(base), name);
  },
  async rename(from, to) {
    try {
      await fsp.rename(from, to);
    } catch (e) {
      throw hostError(e, from, `rename to ${to}`);
    }
  },
};
