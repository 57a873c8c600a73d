/** Every command, one file each; a new command adds its file and one line here. */
import type { Command } from 'commander';
import type { CliContext } from '../context.js';
import { registerAcquire } from './acquire.js';
import { registerCheck } from './check.js';
import { registerCommit } from './commit.js';
import { registerCompare } from './compare.js';
import { registerConvert } from './convert.js';
import { registerCreate } from './create.js';
import { registerHash } from './hash.js';
import { registerInfo } from './info.js';
import { registerMap } from './map.js';
import { registerRebase } from './rebase.js';
import { registerRescue } from './rescue.js';
import { registerResize } from './resize.js';
import { registerServe } from './serve.js';
import { registerSnapshot } from './snapshot.js';
import { registerVerify } from './verify.js';

export type RegisterCommand = (program: Command, ctx: CliContext, run: Runner) => void;
/** Wraps an action so its errors print as one line and its result becomes the exit status. */
export type Runner = <A extends unknown[]>(
  action: (...args: A) => Promise<number>,
  opts?: { errorExit?: number },
) => (...args: A) => Promise<void>;

export const commands: RegisterCommand[] = [
  registerInfo,
  registerCreate,
  registerConvert,
  registerCompare,
  registerMap,
  registerHash,
  registerCheck,
  registerSnapshot,
  registerCommit,
  registerRebase,
  registerResize,
  registerRescue,
  registerServe,
  registerAcquire,
  registerVerify,
];
