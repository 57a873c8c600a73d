/** Maps host (errno) errors to one-line PlatterErrors that name the file. */
import { PlatterError } from '../core/errors.js';

export function hostError(e: unknown, path: string, during?: string): Error {
  const code = (e as NodeJS.ErrnoException)?.code;
  const where = during ? ` (${during})` : '';
  switch (code) {
    case 'ENOENT':
      return new PlatterError('ENOENT', `${path}: no such file or directory`);
    case 'EEXIST':
      return new PlatterError('EEXIST', `${path}: already exists (use --force to overwrite)`);
    case 'EACCES':
    case 'EPERM':
      return new PlatterError('EIO', `${path}: permission denied${where}`);
    case 'EISDIR':
      return new PlatterError('EINVAL', `${path}: is a directory, not an image`);
    case 'ENOSPC':
      return new PlatterError('ENOSPC', `${path}: no space left on device${where}`);
    case 'EIO':
      return new PlatterError('EIO', `${path}: input/output error${where}`);
    case 'EAGAIN':
      return new PlatterError('ELOCKED', `${path}: is locked by another process${where}`);
    default:
      if (code) return new PlatterError('EIO', `${path}: ${code}${where}`);
      return e instanceof Error ? e : new Error(String(e));
  }
}
