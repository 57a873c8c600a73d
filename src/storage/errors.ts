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
    case 'ENOTDIR':
      return new PlatterError('ENOENT', `${path}: a part of the path is not a directory`);
    case 'ENAMETOOLONG':
      return new PlatterError('EINVAL', `${path}: file name too long`);
    case 'ELOOP':
      return new PlatterError('EINVAL', `${path}: too many levels of symbolic links`);
    case 'EROFS':
      return new PlatterError('EIO', `${path}: read-only file system${where}`);
    case 'EBUSY':
      return new PlatterError('EIO', `${path}: device or resource busy (mounted or in use?)${where}`);
    case 'ENXIO':
    case 'ENODEV':
      return new PlatterError('EGONE', `${path}: no such device (is it attached?)${where}`);
    case 'ENOTCONN':
    case 'ESHUTDOWN':
      // A FUSE file (nbdfuse) whose server went away.
      return new PlatterError(
        'EGONE',
        `${path}: the device is gone (transport endpoint is not connected)${where}`,
      );
    case 'EFBIG':
      return new PlatterError('ENOSPC', `${path}: file too large for this file system${where}`);
    case 'EDQUOT':
      return new PlatterError('ENOSPC', `${path}: disk quota exceeded${where}`);
    default:
      if (code) return new PlatterError('EIO', `${path}: ${code}${where}`);
      return e instanceof Error ? e : new Error(String(e));
  }
}
