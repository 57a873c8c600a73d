/** Printing results: JSON (camelCase, sizes as plain numbers) or text. */
import type { CliContext } from './context.js';

export function printJson(ctx: CliContext, value: unknown): void {
  ctx.stdout.write(`${JSON.stringify(value, null, 2)}\n`);
}

export function printLines(ctx: CliContext, lines: string[]): void {
  if (lines.length) ctx.stdout.write(`${lines.join('\n')}\n`);
}
