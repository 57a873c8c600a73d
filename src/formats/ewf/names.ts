/**
 * Segment file names: the first file's extension gives the letter and case
 * (.E01, .e01, .s01 ...). Segments 1..99 are .E01..E99; then .EAA..EZZ,
 * .FAA..FZZ, ... up to .ZZZ (libewf's limit: 99 + 26 x 26 x (26 - letter) files).
 */
import { invalid } from '../../core/errors.js';

const EXT = /\.([A-Za-z])(\d\d)$/;

/**
 * A set being written under a temporary name (`disk.E01.partial`, as convert
 * does) names its later segments after the final name (`disk.E02`), so that
 * renaming the first file completes the set.
 */
const PARTIAL = '.partial';
const final = (path: string): string => (path.endsWith(PARTIAL) ? path.slice(0, -PARTIAL.length) : path);

/** True if the path ends in a first-segment extension such as .E01 (optionally + .partial). */
export function isFirstSegmentName(path: string): boolean {
  const m = EXT.exec(final(path));
  return !!m && m[2] === '01';
}

/** The name of segment `n` (1-based) of the set whose first file is `first`. */
export function segmentName(firstPath: string, n: number): string {
  if (n === 1) return firstPath;
  const first = final(firstPath);
  const m = EXT.exec(first);
  if (!m) throw invalid(`${first}: an EWF segment set's first file must end in .E01 (or .e01, .s01)`);
  const stem = first.slice(0, first.length - 4);
  const letter = m[1];
  const upper = letter === letter.toUpperCase();
  if (n < 1) throw invalid(`segment number ${n}`);
  if (n <= 99) return `${stem}.${letter}${String(n).padStart(2, '0')}`;
  const k = n - 100;
  const firstCode = letter.toUpperCase().charCodeAt(0) + Math.floor(k / 676);
  if (firstCode > 90) throw invalid(`${first}: segment ${n} is past the last EWF extension (.ZZZ)`);
  const a = String.fromCharCode(firstCode);
  const b = String.fromCharCode(65 + Math.floor((k % 676) / 26));
  const c = String.fromCharCode(65 + (k % 26));
  const ext = a + b + c;
  return `${stem}.${upper ? ext : ext.toLowerCase()}`;
}

/** The segment number that `name` (a file name in the first file's directory) has in the set of `firstPath`, if any. */
export function segmentNumber(firstPath: string, name: string): number | undefined {
  const first = baseName(final(firstPath));
  const m = EXT.exec(first);
  if (!m) return undefined;
  const stem = first.slice(0, first.length - 3);
  if (name.length !== first.length || !name.startsWith(stem)) return undefined;
  const ext = name.slice(stem.length);
  const letter = m[1];
  if (ext[0] === letter && /^\d\d$/.test(ext.slice(1))) return Number(ext.slice(1)) || undefined;
  const upper = letter === letter.toUpperCase();
  if (!(upper ? /^[A-Z]{3}$/ : /^[a-z]{3}$/).test(ext)) return undefined;
  const [a, b, c] = [...ext.toUpperCase()].map((x) => x.charCodeAt(0) - 65);
  const k = (a - (letter.toUpperCase().charCodeAt(0) - 65)) * 676 + b * 26 + c;
  return k < 0 ? undefined : 100 + k;
}

/** The last path component, for messages and sibling lookups. */
export function baseName(path: string): string {
  const i = Math.max(path.lastIndexOf('/'), path.lastIndexOf('\\'));
  return i < 0 ? path : path.slice(i + 1);
}
