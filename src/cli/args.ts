/** Parsing helpers shared by the commands. */
import { parseSize } from '../core/bytes.js';
import { invalid } from '../core/errors.js';

/** "-o a=1,b=2" (repeatable) -> {a: '1', b: '2'}; a bare key means "on". */
export function parseKeyValues(values: string[] | undefined): Record<string, string> {
  const out: Record<string, string> = {};
  for (const v of values ?? []) {
    for (const part of v.split(',')) {
      if (part === '') continue;
      const i = part.indexOf('=');
      const k = (i < 0 ? part : part.slice(0, i)).trim();
      if (!k) throw invalid(`invalid option '${part}': expected KEY=VALUE`);
      out[k] = i < 0 ? 'on' : part.slice(i + 1);
    }
  }
  return out;
}

/** Commander collector for repeatable options. */
export function collect(value: string, previous: string[] = []): string[] {
  return [...previous, value];
}

export function sizeArg(text: string): number {
  return parseSize(text);
}
