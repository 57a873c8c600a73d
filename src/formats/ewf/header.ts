/**
 * The case metadata of an E01: the "header" section (zlib-compressed ASCII,
 * CRLF lines in EnCase) and "header2" (zlib-compressed UTF-16 with a byte
 * order mark, LF lines). Both hold categories; the "main" category is a line
 * of tab-separated identifiers followed by a line of values:
 *
 *   id  meaning            id  meaning
 *   a   description        av  software version
 *   c   case number        ov  operating system
 *   n   evidence number    m   acquisition date (header2: POSIX seconds;
 *   e   examiner               header: "YYYY M D h m s")
 *   t   notes              u   system date (same forms)
 *   md  media model        p   password hash ("0": none)
 *   sn  media serial       r   compression (b/f/n, old layouts)
 *
 * Values cannot contain tabs or line breaks; the writer turns them into spaces.
 */
import { corrupt } from '../../core/errors.js';

export interface CaseMetadata {
  caseNumber?: string;
  evidenceNumber?: string;
  examiner?: string;
  description?: string;
  notes?: string;
  model?: string;
  serialNumber?: string;
  softwareVersion?: string;
  operatingSystem?: string;
  /** ISO 8601 (UTC). */
  acquisitionDate?: string;
  systemDate?: string;
}

const KEYS: Record<string, keyof CaseMetadata> = {
  a: 'description',
  c: 'caseNumber',
  n: 'evidenceNumber',
  e: 'examiner',
  t: 'notes',
  md: 'model',
  sn: 'serialNumber',
  av: 'softwareVersion',
  ov: 'operatingSystem',
  m: 'acquisitionDate',
  u: 'systemDate',
};

/** Decodes the inflated bytes of a header (latin1) or header2 (UTF-16 with BOM) section. */
export function decodeHeaderText(bytes: Uint8Array, utf16: boolean): string {
  if (!utf16) return Buffer.from(bytes).toString('latin1');
  if (bytes[0] === 0xfe && bytes[1] === 0xff) {
    const swapped = Buffer.from(bytes.subarray(2));
    swapped.swap16();
    return swapped.toString('utf16le');
  }
  const start = bytes[0] === 0xff && bytes[1] === 0xfe ? 2 : 0;
  return Buffer.from(bytes.subarray(start, start + ((bytes.length - start) & ~1))).toString('utf16le');
}

function parseDate(v: string): string | undefined {
  if (/^\d+$/.test(v)) return new Date(Number(v) * 1000).toISOString();
  const m = /^(\d{4}) (\d{1,2}) (\d{1,2}) (\d{1,2}) (\d{1,2}) (\d{1,2})$/.exec(v.trim());
  if (m) {
    const [y, mo, d, h, mi, s] = m.slice(1).map(Number);
    return new Date(Date.UTC(y, mo - 1, d, h, mi, s)).toISOString();
  }
  return v || undefined;
}

/** Parses the text of a header or header2 section into case metadata. */
export function parseHeaderText(file: string, text: string, what: string): CaseMetadata {
  const lines = text.split(/\r?\n/);
  const count = lines[0]?.trim() ?? '';
  if (!/^\d+$/.test(count))
    throw corrupt(file, `${what}: first line '${count.slice(0, 20)}' is not a category count`);
  const main = lines.findIndex((l) => l.trim() === 'main');
  if (main < 0 || main + 2 >= lines.length)
    throw corrupt(file, `${what}: no 'main' category with identifiers and values`);
  const ids = lines[main + 1].split('\t');
  const values = lines[main + 2].split('\t');
  if (values.length > ids.length + 1) {
    throw corrupt(
      file,
      `${what}: ${values.length} values for ${ids.length} identifiers in the 'main' category`,
    );
  }
  const out: CaseMetadata = {};
  ids.forEach((id, i) => {
    const key = KEYS[id.trim()];
    const value = values[i] ?? '';
    if (!key || value === '') return;
    out[key] = key === 'acquisitionDate' || key === 'systemDate' ? parseDate(value) : value;
  });
  return out;
}

const clean = (v: string | undefined): string => (v ?? '').replace(/[\t\r\n]/g, ' ');

/** header2 text as EnCase 6 (and ewfacquire -f encase6) writes it. */
export function header2Text(m: CaseMetadata, when: Date): string {
  const secs = String(Math.floor(when.getTime() / 1000));
  const ids = ['a', 'c', 'n', 'e', 't', 'md', 'sn', 'av', 'ov', 'm', 'u', 'p', 'dc'];
  const vals = [
    clean(m.description),
    clean(m.caseNumber),
    clean(m.evidenceNumber),
    clean(m.examiner),
    clean(m.notes),
    clean(m.model),
    clean(m.serialNumber),
    clean(m.softwareVersion),
    clean(m.operatingSystem),
    secs,
    secs,
    '0',
    '',
  ];
  return [
    '3',
    'main',
    ids.join('\t'),
    vals.join('\t'),
    '',
    'srce',
    '0\t1',
    'p\tn\tid\tev\ttb\tlo\tpo\tah\tgu\taq',
    '0\t0',
    '\t\t\t\t\t-1\t-1\t\t\t',
    '',
    'sub',
    '0\t1',
    'p\tn\tid\tnu\tco\tgu',
    '0\t0',
    '\t\t\t\t1\t',
    '',
    '',
  ].join('\n');
}

/** The UTF-16LE bytes (with BOM) of a header2 text. */
export function encodeHeader2(text: string): Uint8Array {
  const body = Buffer.from(text, 'utf16le');
  const out = new Uint8Array(body.length + 2);
  out[0] = 0xff;
  out[1] = 0xfe;
  out.set(body, 2);
  return out;
}

/** header text as EnCase 4 to 7 writes it (ASCII, CRLF). */
export function headerText(m: CaseMetadata, when: Date): string {
  const d = `${when.getUTCFullYear()} ${when.getUTCMonth() + 1} ${when.getUTCDate()} ${when.getUTCHours()} ${when.getUTCMinutes()} ${when.getUTCSeconds()}`;
  const ascii = (v: string | undefined): string => clean(v).replace(/[^\x20-\x7e]/g, '?');
  const ids = ['c', 'n', 'a', 'e', 't', 'av', 'ov', 'm', 'u', 'p'];
  const vals = [
    ascii(m.caseNumber),
    ascii(m.evidenceNumber),
    ascii(m.description),
    ascii(m.examiner),
    ascii(m.notes),
    ascii(m.softwareVersion),
    ascii(m.operatingSystem),
    d,
    d,
    '0',
  ];
  return ['1', 'main', ids.join('\t'), vals.join('\t'), '', ''].join('\r\n');
}
