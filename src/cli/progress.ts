/**
 * Renders Progress on stderr: a bar on a TTY, a line every few seconds in a
 * pipe, or JSON lines with `--progress=json` (phase, done, total, rate, eta).
 * Rate is a moving average over the last few seconds; ETA = remaining / rate.
 */
import { formatSize } from '../core/bytes.js';
import { PlatterError } from '../core/errors.js';
import type { OnProgress, Progress } from '../ops/progress.js';
import type { CliContext } from './context.js';

export type ProgressMode = 'none' | 'auto' | 'json';

/** The modes `-p`/`--progress` take. */
export const PROGRESS_MODES: readonly string[] = ['auto', 'json'];

/** `-p` -> auto, `--progress=json` -> json, absent or -q -> none. */
export function progressMode(value: unknown, quiet?: boolean): ProgressMode {
  if (value !== undefined && value !== true && value !== false && !PROGRESS_MODES.includes(String(value)))
    throw new PlatterError('EINVAL', `--progress=${value}: the mode is auto or json`);
  if (quiet || value === undefined || value === false) return 'none';
  if (value === 'json') return 'json';
  return 'auto';
}

export interface ProgressRenderer {
  onProgress: OnProgress;
  /** Clears the bar (call before printing results or errors). */
  finish(): void;
}

function fmtEta(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return '--:--';
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, '0');
  return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${ss}` : `${m}:${ss}`;
}

export function makeProgress(
  ctx: CliContext,
  mode: ProgressMode,
  now: () => number = Date.now,
): ProgressRenderer {
  if (mode === 'none') return { onProgress: () => undefined, finish: () => undefined };
  const tty = mode === 'auto' && !!ctx.stderr.isTTY;
  const interval = mode === 'json' ? 1000 : tty ? 200 : 5000;
  const samples: Array<[number, number]> = [];
  let phase = '';
  let last = Number.NEGATIVE_INFINITY;
  let lastP: Progress | undefined;
  /** Whether lastP has been rendered (no repeat of the final line on a phase change). */
  let lastShown = false;
  let drawn = false;

  const rateOf = (t: number, done: number): number => {
    samples.push([t, done]);
    while (samples.length > 2 && t - samples[0][0] > 5000) samples.shift();
    const [t0, d0] = samples[0];
    return t > t0 ? ((done - d0) * 1000) / (t - t0) : 0;
  };

  const render = (p: Progress, t: number, final: boolean): void => {
    const rate = rateOf(t, p.done);
    const eta = rate > 0 && p.total > 0 ? (p.total - p.done) / rate : Number.NaN;
    if (mode === 'json') {
      ctx.stderr.write(
        `${JSON.stringify({ phase: p.phase, done: p.done, total: p.total, rate: Math.round(rate), eta: Number.isFinite(eta) ? Math.round(eta) : null })}\n`,
      );
      return;
    }
    const pct = p.total > 0 ? Math.min(100, (100 * p.done) / p.total) : 0;
    const text = `${p.phase}: ${formatSize(p.done)} / ${formatSize(p.total)} (${pct.toFixed(1)}%) ${formatSize(Math.round(rate))}/s ETA ${final ? '0:00' : fmtEta(eta)}`;
    if (tty) {
      const width = Math.max(10, Math.min(40, (ctx.stderr.columns ?? 80) - text.length - 4));
      const fill = Math.round((pct / 100) * width);
      ctx.stderr.write(`\r[${'#'.repeat(fill)}${'.'.repeat(width - fill)}] ${text}\x1b[K`);
      drawn = true;
    } else {
      ctx.stderr.write(`${text}\n`);
    }
  };

  return {
    onProgress(p) {
      const t = now();
      if (p.phase !== phase) {
        if (lastP && lastP.phase === phase && phase && !lastShown) render(lastP, t, true);
        if (drawn) {
          ctx.stderr.write('\n');
          drawn = false;
        }
        phase = p.phase;
        samples.length = 0;
        last = Number.NEGATIVE_INFINITY;
      }
      lastP = p;
      lastShown = false;
      if (t - last >= interval || (p.total > 0 && p.done >= p.total)) {
        last = t;
        render(p, t, p.total > 0 && p.done >= p.total);
        lastShown = true;
      }
    },
    finish() {
      if (drawn) ctx.stderr.write('\n');
      drawn = false;
    },
  };
}
