/**
 * Errors that are the user's or the image's fault carry a code and print as one
 * line (`platter: error: <message>`). Anything else that escapes is our bug.
 */
export type ErrorCode =
  | 'EFORMAT' // not the format we were told / could not recognise it
  | 'ECORRUPT' // the image contradicts its own specification
  | 'EUNSUPPORTED' // valid, but a feature platter does not do (yet)
  | 'EINVAL' // bad argument or option from the user
  | 'EEXIST' // destination exists and --force was not given
  | 'ENOENT' // file missing
  | 'EIO' // the host failed a read or write
  | 'EGONE' // the source or destination went away (connection lost, device removed): not a bad sector
  | 'ERANGE' // offset/length outside the disk
  | 'EREADONLY' // write to something opened read-only
  | 'ECLOSED' // use after close
  | 'ELOCKED' // another process holds the image
  | 'ENOSPC' // no room on the destination
  | 'ECANCELED' // the user interrupted (SIGINT) or the signal aborted
  | 'EVERIFY'; // a hash or checksum did not match

export class PlatterError extends Error {
  readonly code: ErrorCode;
  constructor(code: ErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'PlatterError';
    this.code = code;
  }
}

export const isPlatterError = (e: unknown): e is PlatterError => e instanceof PlatterError;

/** The image's fault: `file: corrupt image: what`. */
export function corrupt(file: string, what: string): PlatterError {
  return new PlatterError('ECORRUPT', `${file}: corrupt image: ${what}`);
}

export function unsupported(what: string): PlatterError {
  return new PlatterError('EUNSUPPORTED', what);
}

export function invalid(what: string): PlatterError {
  return new PlatterError('EINVAL', what);
}

/** Our bug: an impossible state inside platter, never the image's fault. */
export function assert(cond: unknown, what = 'assertion failed'): asserts cond {
  if (!cond) throw new Error(`internal error: ${what}`);
}

/** Throws ECANCELED if the signal has fired. */
export function throwIfAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new PlatterError('ECANCELED', 'interrupted');
}
