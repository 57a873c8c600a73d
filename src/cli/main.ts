/**
 * The platter command: parse, run one command, map errors to one line and an
 * exit status (DESIGN.md). No stack trace for a PlatterError; anything else is
 * our bug and is printed with its stack.
 */
import { Command, CommanderError } from 'commander';
import { isPlatterError } from '../core/errors.js';
import { nodeHost } from '../storage/host.js';
import { commands, type Runner } from './commands/index.js';
import type { CliContext } from './context.js';
import { PROGRESS_MODES } from './progress.js';
import { VERSION } from './version.js';

export { VERSION } from './version.js';

export async function main(argv: string[]): Promise<void> {
  const abort = new AbortController();
  // The first SIGINT/SIGTERM stops the command cleanly (a convert removes its
  // DST.partial); another one a second or more later ends the process at once.
  // One sooner is the same interrupt delivered twice: GNU timeout signals the
  // child and then its whole process group.
  let interruptedAt: number | undefined;
  const onSignal = (sig: NodeJS.Signals): void => {
    const now = performance.now();
    if (interruptedAt === undefined) {
      interruptedAt = now;
      abort.abort(new Error(sig));
    } else if (now - interruptedAt >= 1000) process.exit(130);
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  // A reader that stops early (`platter map IMG | head`) closes the pipe: end
  // quietly with the status a C tool killed by SIGPIPE has (128 + 13), not with a
  // stack trace. Any other failure of an output stream (a full disk) is one line.
  const onOutputError = (name: string) => (e: NodeJS.ErrnoException) => {
    if (e.code === 'EPIPE') process.exit(141);
    if (name !== 'stderr') stderr().write(`platter: error: ${name}: ${e.message}\n`);
    process.exit(1);
  };
  // Node.js makes process.stdout/stderr on first use (~6 ms: it loads its streams),
  // and a run that prints nothing (convert, create) need not pay for that.
  let outWatched = false;
  let errWatched = false;
  const stdout = (): NodeJS.WriteStream => {
    if (!outWatched) process.stdout.on('error', onOutputError('stdout'));
    outWatched = true;
    return process.stdout;
  };
  const stderr = (): NodeJS.WriteStream => {
    if (!errWatched) process.stderr.on('error', onOutputError('stderr'));
    errWatched = true;
    return process.stderr;
  };

  const ctx: CliContext = {
    host: nodeHost,
    get stdout() {
      return stdout();
    },
    get stderr() {
      return stderr();
    },
    signal: abort.signal,
  };
  const fail = (message: string, status: number): void => {
    stderr().write(`platter: error: ${message}\n`);
    process.exitCode = status;
  };

  // If the event loop empties while a command is still pending (a promise that
  // can never settle: a deadlock), Node would exit 0 with the work half done.
  let running = 0;
  process.on('exit', (code) => {
    if (running > 0 && code === 0) {
      stderr().write('platter: internal error (a bug in platter): the command stopped before it finished\n');
      process.exitCode = 70;
    }
  });

  const run: Runner =
    (action, opts = {}) =>
    async (...args) => {
      running++;
      try {
        process.exitCode = await action(...args);
        running--;
      } catch (e) {
        running--;
        if (isPlatterError(e)) fail(e.message, opts.errorExit ?? 1);
        else {
          stderr().write(`platter: internal error (a bug in platter): ${(e as Error)?.stack ?? e}\n`);
          process.exitCode = opts.errorExit ?? 1;
        }
      }
    };

  const program = new Command('platter')
    .version(VERSION)
    .description('disk images: convert, inspect, acquire, rescue, serve')
    .showHelpAfterError(false)
    .exitOverride()
    .configureOutput({
      writeOut: (s) => stdout().write(s),
      writeErr: (s) => stderr().write(s),
      outputError: (s) => stderr().write(`platter: error: ${s.replace(/^error: /, '').trimEnd()}\n`),
    });
  // Building every command's options takes ~3 ms of a run's start: a run of one
  // known command builds only that one (help and unknown commands see them all).
  const named = commands.filter((c) => c.names.includes(argv[0]));
  for (const c of named.length > 0 ? named : commands) c.register(program, ctx, run);

  try {
    await program.parseAsync(bareProgress(argv), { from: 'user' });
  } catch (e) {
    if (e instanceof CommanderError) {
      process.exitCode = e.exitCode === 0 ? 0 : 1;
      return;
    }
    if (isPlatterError(e)) fail(e.message, 1);
    else throw e;
  }
}

/**
 * `-p`/`--progress` take an optional mode (`--progress=json`); written bare they
 * must not swallow the next argument (`platter convert -p SRC DST`), so a bare
 * one takes the next argument only if it is a mode (`-p json`), else it gets
 * the default mode.
 */
function bareProgress(argv: readonly string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a !== '-p' && a !== '--progress') out.push(a);
    else if (PROGRESS_MODES.includes(argv[i + 1])) out.push(`--progress=${argv[++i]}`);
    else out.push('--progress=auto');
  }
  return out;
}
