/**
 * node:fs calls as promises, made from the callback API: node:fs/promises (and
 * the readline and stream modules it loads) costs 1-2 ms of a command's
 * start, and a short convert is mostly start-up.
 */
import {
  close,
  closeSync,
  fdatasync,
  fstat,
  ftruncate,
  lstat,
  open,
  openSync,
  read,
  readdir,
  readSync,
  rename,
  type Stats,
  stat,
  unlink,
  write,
} from 'node:fs';

/** Resolves the callback's one result (or nothing), rejects its error. */
function call<T>(start: (done: (err: NodeJS.ErrnoException | null, value?: T) => void) => void): Promise<T> {
  return new Promise((resolve, reject) => start((err, value) => (err ? reject(err) : resolve(value as T))));
}

export function pread(fd: number, buf: Uint8Array, position: number): Promise<number> {
  return call((done) => read(fd, buf, 0, buf.length, position, done));
}

export function pwrite(fd: number, buf: Uint8Array, position: number): Promise<number> {
  return call((done) => write(fd, buf, 0, buf.length, position, done));
}

export const fsOpen = (path: string, flags: number): Promise<number> =>
  call((done) => open(path, flags, 0o644, done));
export const fsClose = (fd: number): Promise<void> => call((done) => close(fd, done));
export const fsFstat = (fd: number): Promise<Stats> => call((done) => fstat(fd, done));
export const fsFtruncate = (fd: number, size: number): Promise<void> =>
  call((done) => ftruncate(fd, size, done));
export const fsFdatasync = (fd: number): Promise<void> => call((done) => fdatasync(fd, done));
export const fsStat = (path: string): Promise<Stats> => call((done) => stat(path, done));
export const fsLstat = (path: string): Promise<Stats> => call((done) => lstat(path, done));
export const fsRename = (from: string, to: string): Promise<void> => call((done) => rename(from, to, done));
export const fsReaddir = (dir: string): Promise<string[]> => call((done) => readdir(dir, done));

/** Removes a file; one that is not there is no error (rm -f). */
export const fsRemove = (path: string): Promise<void> =>
  call<void>((done) => unlink(path, done)).catch((e: NodeJS.ErrnoException) =>
    e.code === 'ENOENT' ? undefined : Promise.reject(e),
  );

/**
 * Fills `buf` from /dev/urandom (core/random.ts's source for the command line);
 * where there is none, from Web Crypto.
 */
export function readUrandom(buf: Uint8Array): void {
  try {
    const fd = openSync('/dev/urandom', 'r');
    try {
      for (let done = 0; done < buf.length; ) {
        const got = readSync(fd, buf, done, buf.length - done, null);
        if (got <= 0) throw new Error('short read');
        done += got;
      }
    } finally {
      closeSync(fd);
    }
  } catch {
    globalThis.crypto.getRandomValues(buf);
  }
}
