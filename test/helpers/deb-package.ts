// The Debian packages as `npm run package` builds them (scripts/package-deb.sh), for the package
// tests: built into .tmp/package/deb (gzip -1: quicker than the release's xz, same contents; the
// compiled better-sqlite3 is cached per arch in .tmp/package/addons, so only the first build
// of an architecture compiles SQLite).
import { execFile } from 'node:child_process'
import { closeSync, openSync, readSync } from 'node:fs'
import path from 'node:path'
import { promisify } from 'node:util'
import { repoRoot } from './gateway-process.js'

const execFileAsync = promisify(execFile)

export const DEB_OUT = path.join(repoRoot, '.tmp', 'package', 'deb')
/** Long enough for a first build on a busy 2-core machine (SQLite compiled from source). */
export const BUILD_TIMEOUT_MS = 9 * 60_000

export type DebArch = 'amd64' | 'arm64'

/** Build the package for one architecture; resolves with the path of the .deb. */
export async function buildDeb(arch: DebArch): Promise<string> {
  try {
    const { stdout } = await execFileAsync('bash', [path.join(repoRoot, 'scripts', 'package-deb.sh'), arch], {
      cwd: repoRoot,
      env: { ...process.env, DEB_OUT, DEB_COMPRESS: 'gzip', DEB_LEVEL: '1', IOTHUB_EDGE_SKIP_BUILD: '1' },
      maxBuffer: 16 * 1024 * 1024,
      timeout: BUILD_TIMEOUT_MS,
    })
    return stdout.trim().split('\n').pop() as string
  } catch (err) {
    const e = err as Error & { stdout?: string; stderr?: string }
    throw new Error(`npm run package ${arch} failed: ${e.message}\n${e.stderr ?? ''}`)
  }
}

/** `dpkg-deb -x`: the package's files under root, as dpkg would install them. */
export async function extractDeb(deb: string, root: string): Promise<void> {
  await execFileAsync('dpkg-deb', ['-x', deb, root])
}

/** A field of the package's control file (`dpkg-deb -f`). */
export async function debField(deb: string, field: string): Promise<string> {
  const { stdout } = await execFileAsync('dpkg-deb', ['-f', deb, field])
  return stdout.trim()
}

const ELF_MACHINES: Record<number, string> = { 0x3e: 'x86-64', 0xb7: 'aarch64' }

/** The machine an ELF file is built for (its e_machine), e.g. 'aarch64'. */
export function elfMachine(file: string): string {
  const head = Buffer.alloc(20)
  const fd = openSync(file, 'r')
  try {
    readSync(fd, head, 0, head.length, 0)
  } finally {
    closeSync(fd)
  }
  if (head.readUInt32BE(0) !== 0x7f454c46) throw new Error(`${file} is not an ELF file`)
  const machine = head.readUInt16LE(18)
  return ELF_MACHINES[machine] ?? `e_machine ${machine}`
}
