// The one-time setup code: made when no web UI user exists, kept only in a 0600 file in the data
// folder (so a running gateway and `iothub-edge ui reset-password` agree without talking to each
// other), printed once in the log when made, and deleted when the first user is set up.
import { randomInt, timingSafeEqual, createHash } from 'node:crypto'
import { readFileSync, rmSync, writeFileSync } from 'node:fs'
import path from 'node:path'

export const SETUP_CODE_FILE = 'ui-setup-code'
// Crockford's base32: no I, L, O or U to misread on a phone screen.
const ALPHABET = '0123456789ABCDEFGHJKMNPQRSTVWXYZ'
const GROUPS = 3
const GROUP_LENGTH = 4

export const setupCodeFile = (dataDir: string): string => path.join(dataDir, SETUP_CODE_FILE)

/** A new code (60 bits, `XXXX-XXXX-XXXX`) written to the file (0600), replacing any earlier one. */
export function createSetupCode(dataDir: string): { code: string; file: string } {
  const groups = Array.from({ length: GROUPS }, () => Array.from({ length: GROUP_LENGTH }, () => ALPHABET[randomInt(ALPHABET.length)]).join(''))
  const code = groups.join('-')
  const file = setupCodeFile(dataDir)
  rmSync(file, { force: true })
  writeFileSync(file, code + '\n', { mode: 0o600, flag: 'wx' })
  return { code, file }
}

export function readSetupCode(dataDir: string): string | undefined {
  try {
    return readFileSync(setupCodeFile(dataDir), 'utf8').trim() || undefined
  } catch {
    return undefined
  }
}

export function removeSetupCode(dataDir: string): void {
  rmSync(setupCodeFile(dataDir), { force: true })
}

/** The code as typed (lower case, spaces, dashes or none) against the one in the file, in constant time. */
export function setupCodeMatches(typed: string, expected: string): boolean {
  const norm = (s: string): Buffer => createHash('sha256').update(s.toUpperCase().replace(/[\s-]/g, '')).digest()
  return timingSafeEqual(norm(typed), norm(expected))
}
