/** platter's version, shown by --version and written into logs and mapfiles. */
export const VERSION = '0.1.0';
