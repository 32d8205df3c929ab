// Files in the data folder the gateway's user may not use. After something ran as root on it (the
// gateway started by hand with sudo, a backup restored or copied as root), SQLite opens a database
// it may not write read-only without a word and fails at the first write with its bare "attempt
// to write a readonly database" (and history.db would be taken for damaged and moved aside). So the
// start looks first, before anything is opened, and says which file, whose it is, and the command
// that gives the folder back (IHE_DATA_FILE_UNWRITABLE).
import { accessSync, constants, readdirSync, readFileSync, statSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'

/** What the gateway writes: SQLite's files (databases, their WAL, shared memory, journal), the disk-full reserve, its port for the CLI. */
const WRITTEN = /(\.db(-wal|-shm|-journal)?|^store\.ballast|^runtime\.json)$/
/** What it only reads once made (keys, tokens, the setup code, the device facts' snapshot). */
const READ = new Set(['secret.key', 'api-token', 'ui-setup-code', 'device-facts.json'])
// The data folder is shallow (ota/images/...): deeper or past this many entries is not looked at.
const MAX_DEPTH = 3
const MAX_ENTRIES = 10_000

export interface Unusable {
  path: string
  /** 'write' for a folder or a file the gateway writes, 'read' for one it reads. */
  need: 'read' | 'write'
  /** access(2)'s answer: EACCES, EPERM, EROFS. */
  errno: string
  /** How many entries in the folder are unusable alike (this one included). */
  count: number
}

function refused(p: string, mode: number): string | undefined {
  try {
    accessSync(p, mode)
    return undefined
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code
    return code === 'ENOENT' ? undefined : (code ?? 'EACCES')
  }
}

/**
 * The first folder or file under `dataDir` (itself included) this process may not use as the
 * gateway does, and how many there are; undefined when all is well. Root may use everything
 * (access(2) says so), except on a read-only file system.
 */
export function findUnusable(dataDir: string): Unusable | undefined {
  // A folder or database named first: the one whose message a technician would have met.
  let first: Omit<Unusable, 'count'> | undefined
  let firstRead: Omit<Unusable, 'count'> | undefined
  let count = 0
  let seen = 0
  const note = (p: string, need: Unusable['need'], errno: string | undefined): void => {
    if (!errno) return
    count++
    if (need === 'write') first ??= { path: p, need, errno }
    else firstRead ??= { path: p, need, errno }
  }
  const walk = (dir: string, depth: number): void => {
    note(dir, 'write', refused(dir, constants.R_OK | constants.W_OK | constants.X_OK))
    let entries
    try {
      entries = readdirSync(dir, { withFileTypes: true })
    } catch {
      return // not readable: already counted above
    }
    for (const e of entries) {
      if (++seen > MAX_ENTRIES) return
      const p = path.join(dir, e.name)
      if (e.isDirectory()) {
        if (depth < MAX_DEPTH) walk(p, depth + 1)
      } else if (e.isFile()) {
        if (WRITTEN.test(e.name)) note(p, 'write', refused(p, constants.R_OK | constants.W_OK))
        else if (READ.has(e.name)) note(p, 'read', refused(p, constants.R_OK))
      }
    }
  }
  try {
    if (!statSync(dataDir).isDirectory()) return undefined
  } catch {
    return undefined // not made yet: the data folder's lock says what stops it
  }
  walk(dataDir, 1)
  const found = first ?? firstRead
  return found ? { ...found, count } : undefined
}

/** The name of a user id (from /etc/passwd), or `#uid`. */
export function userName(uid: number): string {
  try {
    const line = readFileSync('/etc/passwd', 'utf8')
      .split('\n')
      .find((l) => l.split(':')[2] === String(uid))
    if (line) return line.split(':')[0]
  } catch {
    // no /etc/passwd: the number will do
  }
  return `#${uid}`
}

/** This process's user, as `name (uid N)`, and its name alone for chown. */
function me(): { name: string; said: string } {
  const uid = process.getuid?.() ?? -1
  const name = uid >= 0 ? userName(uid) : os.userInfo().username
  return { name, said: `${name} (uid ${uid})` }
}

/** One line: which file or folder, whose it is, and what to run; for the start's error. */
export function describeUnusable(dataDir: string, u: Pick<Unusable, 'path' | 'need' | 'errno'> & { count?: number }): string {
  const others = u.count && u.count > 1 ? ` (and ${u.count - 1} more file(s) or folder(s) there)` : ''
  const { name, said } = me()
  if (u.errno === 'EROFS') return `${u.path} is on a file system mounted read-only${others}: the gateway must write its data folder; mount it read-write or set gateway.dataDir to a folder that is`
  let owner: string
  let mode: string
  let mine: boolean
  try {
    const st = statSync(u.path)
    owner = userName(st.uid)
    mode = (st.mode & 0o777).toString(8).padStart(4, '0')
    mine = st.uid === process.getuid?.()
  } catch {
    return `${u.path} cannot be ${u.need === 'read' ? 'read' : 'written'} by the gateway's user ${said} (${u.errno})${others}: run chown -R ${name}: ${dataDir} (as root)`
  }
  if (mine) return `${u.path} is not ${u.need === 'read' ? 'readable' : 'writable'} by its owner ${said} (mode ${mode})${others}: run chmod -R u+rwX ${dataDir}`
  return `${u.path} belongs to ${owner}, and the gateway's user ${said} may not ${u.need} it${others}: run chown -R ${name}: ${dataDir} as root, then start the gateway again (something ran as ${owner} on the data folder)`
}
