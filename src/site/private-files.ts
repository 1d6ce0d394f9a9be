// Key material on disk (issue 17 item 8): the cluster key, the CA key and every site key are
// written 0600 into folders made 0700, never through a symlink (O_NOFOLLOW | O_EXCL, and a
// replacement goes through a fresh temporary file renamed over the old one), and a key file
// that group or others can read is refused at start with the chmod that fixes it.
import { randomBytes } from 'node:crypto';
import { closeSync, constants, fsyncSync, lstatSync, mkdirSync, openSync, renameSync, statSync, unlinkSync, writeSync } from 'node:fs';
import { basename, dirname, join, resolve } from 'node:path';

/** Creates `dir` (and parents) 0700 when missing; an existing folder keeps its mode. */
export function ensurePrivateDir(dir: string): void {
  mkdirSync(dir, { recursive: true, mode: 0o700 });
}

/**
 * Writes `data` to `path` with mode 0600 (or `mode`). Refuses a symlink at `path` (it could
 * point anywhere: /etc/shadow, another user's file) and, unless `force`, any existing file.
 * With `force` the new content goes to a fresh temporary file beside it (O_EXCL|O_NOFOLLOW),
 * which is then renamed over `path`: never a write through an existing inode or link.
 */
export function writePrivateFile(path: string, data: string | Buffer, options: { force?: boolean; mode?: number; what?: string } = {}): string {
  const abs = resolve(path);
  const what = options.what ?? 'key file';
  const mode = options.mode ?? 0o600;
  let existing: ReturnType<typeof lstatSync> | undefined;
  try {
    existing = lstatSync(abs);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code !== 'ENOENT') throw err;
  }
  if (existing?.isSymbolicLink()) {
    throw new Error(`${abs} is a symbolic link; refusing to write a ${what} through it (remove the link, or give the real path)`);
  }
  if (existing !== undefined && options.force !== true) {
    throw new Error(`${abs} already exists; refusing to overwrite it (use --force to replace it)`);
  }
  if (existing !== undefined && !existing.isFile()) throw new Error(`${abs} exists and is not a regular file; refusing to replace it with a ${what}`);
  ensurePrivateDir(dirname(abs));
  const target = existing === undefined ? abs : join(dirname(abs), `.${basename(abs)}.${randomBytes(6).toString('hex')}.tmp`);
  const fd = openSync(target, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, mode);
  try {
    const buf = typeof data === 'string' ? Buffer.from(data, 'utf8') : data;
    let at = 0;
    while (at < buf.length) at += writeSync(fd, buf, at, buf.length - at);
    fsyncSync(fd);
  } catch (err) {
    closeSync(fd);
    unlinkSync(target);
    throw err;
  }
  closeSync(fd);
  if (target !== abs) renameSync(target, abs);
  return abs;
}

/**
 * Undefined when `path` is a private file (no group/other permission bits); otherwise the
 * problem with its fix. A missing file is not this check's business (the reader names it).
 */
export function privateFileProblem(path: string, key: string): string | undefined {
  let st;
  try {
    st = statSync(path);
  } catch {
    return undefined;
  }
  if ((st.mode & 0o077) === 0) return undefined;
  return `${key}: ${path} is readable or writable by group/others (mode ${(st.mode & 0o777).toString(8).padStart(4, '0')}); a key must be private to the service user. Fix: chmod 600 ${path}`;
}
