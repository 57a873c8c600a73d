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

/** Each file's commands by name, and how to add them to the program. */
export const commands: Array<{ names: readonly string[]; register: RegisterCommand }> = [
  { names: ['info'], register: registerInfo },
  { names: ['create'], register: registerCreate },
  { names: ['convert'], register: registerConvert },
  { names: ['compare'], register: registerCompare },
  { names: ['map'], register: registerMap },
  { names: ['hash'], register: registerHash },
  { names: ['check'], register: registerCheck },
  { names: ['snapshot'], register: registerSnapshot },
  { names: ['commit'], register: registerCommit },
  { names: ['rebase'], register: registerRebase },
  { names: ['resize'], register: registerResize },
  { names: ['rescue', 'mapview'], register: registerRescue },
  { names: ['serve'], register: registerServe },
  { names: ['acquire'], register: registerAcquire },
  { names: ['verify'], register: registerVerify },
];
