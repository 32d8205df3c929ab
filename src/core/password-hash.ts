// Password hashing for the web UI's users and the local broker's app accounts (broker.apps):
// scrypt (node:crypto, run in the gateway's scrypt helper process, src/core/scrypt-process.ts, so the event
// loop keeps serving devices while a login is checked), stored with its parameters so they can be raised later:
// `scrypt$N$r$p$salt$hash`, salt and hash in base64url. A UI user's hash made with weaker
// parameters than the current ones is replaced at the next successful login.
import { createHmac, randomBytes, timingSafeEqual, type ScryptOptions } from 'node:crypto'
import { scryptOffProcess } from './scrypt-process.js'

/**
 * N = 2^15, r = 8: 32 MiB and about 150 ms on the development machine (an ARM box takes a few times
 * longer); decision 0018-ui-login.
 */
export const SCRYPT_PARAMS = { N: 1 << 15, r: 8, p: 1 } as const
const KEY_LENGTH = 32
export const PASSWORD_MIN_LENGTH = 10
export const PASSWORD_MAX_LENGTH = 256

function scrypt(password: string, salt: Buffer, keylen: number, opts: ScryptOptions): Promise<Buffer> {
  // maxmem: 128 * N * r bytes plus some room (node's default of 32 MiB is exactly N = 2^15's need).
  const maxmem = 128 * (opts.N ?? 0) * (opts.r ?? 8) * 2
  return scryptOffProcess(password.normalize('NFC'), salt, keylen, { ...opts, maxmem })
}

export async function hashPassword(password: string, params: { N: number; r: number; p: number } = SCRYPT_PARAMS): Promise<string> {
  const salt = randomBytes(16)
  const key = await scrypt(password, salt, KEY_LENGTH, params)
  return ['scrypt', params.N, params.r, params.p, salt.toString('base64url'), key.toString('base64url')].join('$')
}

/** Whether `password` matches `stored`; `stale`: the hash was made with other parameters than the current ones. */
export async function verifyPassword(password: string, stored: string): Promise<{ ok: boolean; stale: boolean }> {
  const [kind, n, r, p, salt, hash] = stored.split('$')
  const params = { N: Number(n), r: Number(r), p: Number(p) }
  if (kind !== 'scrypt' || !salt || !hash || ![params.N, params.r, params.p].every((x) => Number.isInteger(x) && x > 0)) return { ok: false, stale: false }
  const expected = Buffer.from(hash, 'base64url')
  const key = await scrypt(password, Buffer.from(salt, 'base64url'), expected.length, params)
  const ok = key.length === expected.length && timingSafeEqual(key, expected)
  return { ok, stale: params.N !== SCRYPT_PARAMS.N || params.r !== SCRYPT_PARAMS.r || params.p !== SCRYPT_PARAMS.p }
}

/** A hash of nothing anyone knows: checked against for unknown usernames, so they take as long as known ones. */
let decoy: Promise<string> | undefined
export function decoyHash(): Promise<string> {
  decoy ??= hashPassword(randomBytes(16).toString('base64url'))
  return decoy
}

/** Why a new password is refused, or undefined when it is acceptable. */
export function passwordProblem(password: string, username?: string): string | undefined {
  const length = [...password].length
  if (length < PASSWORD_MIN_LENGTH) return `the password must be at least ${PASSWORD_MIN_LENGTH} characters long (it has ${length})`
  if (length > PASSWORD_MAX_LENGTH) return `the password must be at most ${PASSWORD_MAX_LENGTH} characters long`
  if (username !== undefined && password.toLowerCase() === username.toLowerCase()) return 'the password must not be the username'
  return undefined
}

/** Whether `stored` has the shape hashPassword makes (checked at config load; says nothing of the password). */
export function isPasswordHash(stored: string): boolean {
  const [kind, n, r, p, salt, hash, ...rest] = stored.split('$')
  const b64url = /^[A-Za-z0-9_-]+$/
  return kind === 'scrypt' && rest.length === 0 && [n, r, p].every((x) => /^[1-9][0-9]*$/.test(x ?? '')) && b64url.test(salt ?? '') && b64url.test(hash ?? '') && Buffer.from(hash, 'base64url').length >= 16
}

/**
 * Logins of an MQTT client come again and again (reconnects, tools that connect per request): after
 * one successful scrypt check of an account's password, later ones compare an HMAC of it under a
 * key of this run (constant time, microseconds); a wrong password repeated costs one scrypt, not one
 * per attempt. Nothing here outlives the process.
 */
export class VerifiedPasswords {
  private readonly key = randomBytes(32)
  private readonly verified = new Map<string, Buffer>()
  private readonly failed = new Map<string, Set<string>>()

  async check(account: string, password: string, stored: string): Promise<boolean> {
    const mac = createHmac('sha256', this.key).update(`${stored}\u0000${password}`).digest()
    const known = this.verified.get(account)
    if (known && timingSafeEqual(known, mac)) return true
    const failed = this.failed.get(account)
    if (failed?.has(mac.toString('base64'))) return false
    const { ok } = await verifyPassword(password, stored)
    if (ok) {
      this.verified.set(account, mac)
      return true
    }
    let set = failed
    if (!set) this.failed.set(account, (set = new Set()))
    if (set.size >= 16) set.clear()
    set.add(mac.toString('base64'))
    return false
  }
}
