/**
 * platter serve IMAGE: export an image over NBD until SIGINT/SIGTERM.
 *
 *   mode                  | disk served                         | locks
 *   ----------------------|-------------------------------------|-------------------------------
 *   virtual (default)     | openImage() chain                   | exclusive, or shared if -r
 *   virtual --snapshot    | stack(cow(temp file), chain r/o)    | shared (the image is only read)
 *   --physical            | the file/device bytes, no format    | none
 *   -U / --force-share    | as above, opened without locks      | none
 *
 * `--read-only` wraps the result in readonly(). The first line on stdout is
 * the URI clients connect to (with --json: an object), printed once the
 * server listens. `--run CMD` is nbdkit's captive mode: CMD runs with $uri
 * set and the server stops (flushing) when it exits, with CMD's status.
 */
import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { constants as osConstants, tmpdir } from 'node:os';
import { join } from 'node:path';
import type { Command } from 'commander';
import { stack } from '../../core/chain.js';
import { type Disk, toDisk } from '../../core/disk.js';
import { invalid, PlatterError } from '../../core/errors.js';
import type { Storage } from '../../core/storage.js';
import { cow } from '../../layers/cow.js';
import { readonly } from '../../layers/readonly.js';
import { DEFAULT_PORT } from '../../nbd/protocol.js';
import { type ListenAddress, NbdServer } from '../../nbd/server.js';
import { collect } from '../args.js';
import { openArg } from '../common.js';
import type { CliContext } from '../context.js';
import type { RegisterCommand } from './index.js';

interface ServeOpts {
  format?: string;
  port?: string;
  socket?: string;
  bind?: string;
  readOnly?: boolean;
  snapshot?: boolean;
  physical?: boolean;
  exportName?: string;
  description?: string;
  shared?: string;
  forceShare?: boolean;
  imageOpts?: string[];
  json?: boolean;
  quiet?: boolean;
  verbose?: boolean;
  run?: string;
}

async function openServed(ctx: CliContext, image: string, o: ServeOpts): Promise<Disk> {
  const readOnly = !!o.readOnly;
  // --snapshot takes the writes in an overlay: the image itself is only read.
  const write = !readOnly && !o.snapshot;
  let disk: Disk;
  if (o.physical) {
    if (o.format && o.format !== 'raw')
      throw invalid('--physical serves the raw bytes; it cannot take -f ' + o.format);
    // The raw driver, never probed (any bytes, a qcow2 file's too), without locks.
    disk = await openArg(ctx, image, { format: 'raw', forceShare: true, imageOpts: o.imageOpts }, write);
  } else {
    // A locked image fails here with ELOCKED, naming the lock (storage/file.ts).
    try {
      disk = await openArg(
        ctx,
        image,
        { format: o.format, forceShare: o.forceShare, imageOpts: o.imageOpts },
        write,
      );
    } catch (e) {
      // A format platter cannot modify (E01, ...): say how to serve it anyway.
      if (write && e instanceof PlatterError && e.code === 'EUNSUPPORTED') {
        throw new PlatterError(
          'EUNSUPPORTED',
          `${e.message}; serve it with --read-only, or with --snapshot to take writes in a temporary overlay`,
        );
      }
      throw e;
    }
  }
  if (o.snapshot) {
    // The overlay lives in a temporary file, unlinked at once: nothing is left behind.
    const path = join(tmpdir(), `platter-snapshot-${process.pid}-${randomBytes(6).toString('hex')}`);
    let scratch: Storage;
    try {
      scratch = await ctx.host.create(path, { lock: 'none' });
      await ctx.host.remove(path);
    } catch (e) {
      await disk.close();
      throw e;
    }
    const top = toDisk(cow(disk.size, { storage: scratch }), {
      name: `${image} (snapshot)`,
      readOnly: false,
    });
    disk = stack(top, disk);
  }
  return readOnly ? readonly(disk) : disk;
}

function listenAddress(o: ServeOpts): ListenAddress {
  // systemd socket activation (how `nbdinfo -- [ platter serve IMG ]` and nbdcopy start servers).
  const activated =
    process.env.LISTEN_PID === String(process.pid) && Number(process.env.LISTEN_FDS ?? 0) >= 1;
  if (activated && o.socket === undefined && o.port === undefined && o.bind === undefined) return { fd: 3 };
  if (o.socket !== undefined) {
    if (o.port !== undefined || o.bind !== undefined)
      throw invalid('--socket cannot be combined with --port or --bind');
    return { path: o.socket };
  }
  const port = o.port === undefined ? DEFAULT_PORT : Number(o.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535)
    throw invalid(`invalid port '${o.port}': use 0..65535`);
  return { host: o.bind ?? '127.0.0.1', port };
}

/** Runs `cmd` in a shell with the export's address in its environment; resolves with its exit status. */
function runCaptive(
  ctx: CliContext,
  cmd: string,
  uri: string,
  addr: ListenAddress,
  exportName: string,
): Promise<number> {
  const env: NodeJS.ProcessEnv = { ...process.env, uri, nbd: uri, exportname: exportName };
  if ('path' in addr) env.unixsocket = addr.path;
  else env.port = String(new URL(uri).port);
  return new Promise((resolve, reject) => {
    const child = spawn('/bin/sh', ['-c', cmd], { stdio: 'inherit', env });
    child.once('error', (e) => reject(new PlatterError('EIO', `--run: cannot start /bin/sh: ${e.message}`)));
    child.once('exit', (code, signal) =>
      resolve(code ?? (signal ? 128 + (osConstants.signals[signal] ?? 0) : 1)),
    );
    ctx.signal.addEventListener('abort', () => child.kill('SIGTERM'), { once: true });
  });
}

async function serve(ctx: CliContext, image: string, o: ServeOpts): Promise<number> {
  const shared = o.shared === undefined ? 0 : Number(o.shared);
  if (!Number.isInteger(shared) || shared < 0)
    throw invalid(`invalid --shared '${o.shared}': use a number of clients (0 = no limit)`);
  // --run without an address: a private unix socket, removed afterwards (like nbdkit -U -).
  let privateDir: string | undefined;
  if (o.run !== undefined && o.socket === undefined && o.port === undefined) {
    privateDir = mkdtempSync(join(tmpdir(), 'platter-serve-'));
    o.socket = join(privateDir, 'nbd.sock');
  }
  try {
    const addr = listenAddress(o);
    const disk = await openServed(ctx, image, o);
    const server = new NbdServer(disk, {
      exportName: o.exportName ?? '',
      description: o.description,
      maxClients: shared,
      log: (m) => {
        if (o.verbose || m.startsWith('internal error')) ctx.stderr.write(`platter: serve: ${m}\n`);
      },
    });
    let status = 0;
    try {
      const uri = await server.listen(addr);
      if (o.run !== undefined) {
        status = await runCaptive(ctx, o.run, uri, addr, server.exportName);
      } else {
        // Socket-activated: the client started us and knows the socket; stdout is not ours to fill.
        const quiet = o.quiet || 'fd' in addr;
        if (o.json && !quiet) {
          const { exportName, readOnly } = server;
          const facts = {
            uri,
            exportName,
            size: disk.size,
            readOnly,
            snapshot: !!o.snapshot,
            physical: !!o.physical,
          };
          ctx.stdout.write(`${JSON.stringify(facts)}\n`);
        } else if (!quiet) ctx.stdout.write(`${uri}\n`);
        if (!ctx.signal.aborted)
          await new Promise((r) => ctx.signal.addEventListener('abort', r, { once: true }));
      }
      await server.close();
    } finally {
      await disk.close();
    }
    return status;
  } finally {
    if (privateDir) rmSync(privateDir, { recursive: true, force: true });
  }
}

export const registerServe: RegisterCommand = (program: Command, ctx, run) => {
  program
    .command('serve')
    .description(
      'export an image over NBD (virtual mode: locked, --snapshot for copy-on-write; --physical: pass-through)',
    )
    .argument('<image>', 'image path or block device')
    .option('-f, --format <fmt>', 'image format (probed when absent)')
    .option('--port <n>', `TCP port (default ${DEFAULT_PORT}; 0 picks a free one)`)
    .option('-b, --bind <addr>', 'address to listen on (default 127.0.0.1)')
    .option('-k, --socket <path>', 'listen on a unix socket instead of TCP')
    .option('-r, --read-only', 'export read-only')
    .option('-s, --snapshot', 'copy-on-write overlay in a temporary file: writes never reach the image')
    .option('--physical', 'pass every request to the raw file or device: no format layer, no lock')
    .option('-x, --export-name <name>', 'export name (default empty)')
    .option('-D, --description <text>', 'export description shown to clients')
    .option('-e, --shared <n>', 'clients served at once; more wait (default 0 = no limit)')
    .option('-U, --force-share', 'open the image without taking locks')
    .option('-o, --image-opts <k=v>', 'format open options', collect)
    .option('--json', 'print the listening address as JSON')
    .option('-q, --quiet', 'print nothing but errors')
    .option('-v, --verbose', 'log dropped clients on stderr')
    .option(
      '--run <cmd>',
      'run CMD in a shell with $uri set, then stop serving and exit with its status (a private socket unless --port/--socket)',
    )
    .action(run((image: string, o: ServeOpts) => serve(ctx, image, o)));
};
