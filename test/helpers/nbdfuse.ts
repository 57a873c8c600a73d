/**
 * A failing drive as a file: nbdkit (with the `ddrescue` filter and optionally
 * `delay`) behind nbdfuse. Reads of non-finished areas of the truth map fail
 * with EIO, exactly like a bad disk.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
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
  opts: { delayReadMs?: number } = {},
): Promise<FailingFile> {
  const mnt = join(dir, `mnt-${Math.random().toString(36).slice(2)}`);
  mkdirSync(mnt);
  const filters = ['--filter=ddrescue', ...(opts.delayReadMs ? ['--filter=delay'] : [])];
  const args = [
    join(mnt, 'disk'),
    '--command',
    'nbdkit',
    '-s',
    '--exit-with-parent',
    ...filters,
    'file',
    image,
    `ddrescue-mapfile=${truthMap}`,
    ...(opts.delayReadMs ? [`delay-read=${opts.delayReadMs}ms`] : []),
  ];
  const child: ChildProcess = spawn('nbdfuse', args, { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d) => {
    stderr += d;
  });
  const path = join(mnt, 'disk');
  try {
    await waitFor('nbdfuse', () => existsSync(path), { child, stderr: () => stderr });
  } catch (e) {
    spawnSync('fusermount3', ['-u', mnt]);
    child.kill('SIGKILL');
    throw e;
  }
  return {
    path,
    async unmount() {
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
    },
  };
}
