/**
 * A failing drive as a file: nbdkit (with the `ddrescue` filter and optionally
 * `delay` and `log`) behind nbdfuse. Reads of non-finished areas of the truth map fail
 * with EIO, exactly like a bad disk.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { waitFor } from './wait.js';

export interface FailingFile {
  path: string;
  unmount(): Promise<void>;
}

export async function failingFile(
  dir: string,
  image: string,
  truthMap: string,
  opts: { delayReadMs?: number; logFile?: string } = {},
): Promise<FailingFile> {
  return nbdkitAsFile(dir, [
    ...(opts.logFile ? ['--filter=log'] : []),
    '--filter=ddrescue',
    ...(opts.delayReadMs ? ['--filter=delay'] : []),
    'file',
    image,
    `ddrescue-mapfile=${truthMap}`,
    ...(opts.delayReadMs ? [`delay-read=${opts.delayReadMs}ms`] : []),
    ...(opts.logFile ? [`logfile=${opts.logFile}`] : []),
  ]);
}

/** `nbdkit -s ARGS` served by nbdfuse as a file (a new mount point in DIR); unmount() unmounts and waits. */
export async function nbdkitAsFile(dir: string, nbdkitArgs: string[]): Promise<FailingFile> {
  const mnt = join(dir, `mnt-${Math.random().toString(36).slice(2)}`);
  mkdirSync(mnt);
  const path = join(mnt, 'disk');
  // stderr to a file, not a pipe: a test blocked in spawnSync (platter) cannot
  // drain a pipe, and nbdkit logs every injected error, so a full pipe would stall it.
  const errPath = `${mnt}.stderr`;
  const errFd = openSync(errPath, 'w');
  const child: ChildProcess = spawn(
    'nbdfuse',
    [path, '--command', 'nbdkit', '-s', '--exit-with-parent', ...nbdkitArgs],
    { stdio: ['ignore', 'ignore', errFd] },
  );
  closeSync(errFd);
  const unmount = async (): Promise<void> => {
    spawnSync('fusermount3', ['-u', mnt]);
    if (child.exitCode === null) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(() => {
          child.kill('SIGKILL');
          resolve();
        }, 5000);
        child.once('exit', () => {
          clearTimeout(t);
          resolve();
        });
      });
    }
  };
  try {
    await waitFor('nbdfuse', () => existsSync(path), { child, stderr: () => readFileSync(errPath, 'utf8') });
  } catch (e) {
    await unmount();
    throw e;
  }
  return { path, unmount };
}
