/**
 * A Storage on a host file or block device.
 * TODO(storage): SEEK_DATA/SEEK_HOLE extents, fallocate/punch hole, QEMU-compatible
 * OFD locks, block-device size via ioctl, O_DIRECT — see issue 2 and 9.
 */
import { constants, promises as fsp } from 'node:fs';
import { PlatterError } from '../core/errors.js';
import type { OpenMode, Storage } from '../core/storage.js';
import { hostError } from './errors.js';

export async function openFile(path: string, mode: OpenMode, flags?: number): Promise<Storage> {
  let fh: fsp.FileHandle;
  try {
    fh = await fsp.open(path, flags ?? (mode.write ? constants.O_RDWR : constants.O_RDONLY));
  } catch (e) {
    throw hostError(e, path);
  }
  const st = await fh.stat();
  if (st.isDirectory()) {
    await fh.close();
    throw new PlatterError('EINVAL', `${path}: is a directory, not an image`);
  }
  let closed = false;
  return {
    name: path,
    readOnly: !mode.write,
    files: [path],
    async size() {
      return (await fh.stat()).size;
    },
    async read(buf, offset) {
      let done = 0;
      while (done < buf.length) {
        let n: number;
        try {
          ({ bytesRead: n } = await fh.read(buf, done, buf.length - done, offset + done));
        } catch (e) {
          throw hostError(e, path, `read at offset ${offset + done}`);
        }
        if (n === 0) {
          throw new PlatterError('EIO', `${path}: unexpected end of file reading ${buf.length} bytes at offset ${offset}`);
        }
        done += n;
      }
    },
    async write(buf, offset) {
      if (!mode.write) throw new PlatterError('EREADONLY', `${path}: opened read-only`);
      let done = 0;
      while (done < buf.length) {
        try {
          const { bytesWritten } = await fh.write(buf, done, buf.length - done, offset + done);
          done += bytesWritten;
        } catch (e) {
          throw hostError(e, path, `write at offset ${offset + done}`);
        }
      }
    },
    async truncate(size) {
      try {
        await fh.truncate(size);
      } catch (e) {
        throw hostError(e, path, 'truncate');
      }
    },
    async flush() {
      if (mode.write) await fh.sync().catch((e) => Promise.reject(hostError(e, path, 'fsync')));
    },
    async allocatedSize() {
      return (await fh.stat()).blocks * 512;
    },
    async close() {
      if (closed) return;
      closed = true;
      await fh.close();
    },
  };
}
