// The web UI's login (docs/operators/ui-login.md, decision 0018-ui-login): the first user from the
// setup code, logins checked against scrypt hashes and rate-limited, server-side sessions with an
// idle timeout and an absolute lifetime, API tokens for scripts. Session ids and tokens leave the
// gateway once (the cookie, the 201 answer) and are kept as SHA-256 digests only; nothing here is
// logged but usernames and client addresses.
import { createHash, randomBytes } from 'node:crypto'
import type { Logger } from '../core/log.js'
import { ErrorCodes } from '../core/errors.js'
import type { UiAuthDeps } from './deps.js'
import type { ApiTokenInfo } from '../store/ui-auth.js'
import { decoyHash, hashPassword, passwordProblem, verifyPassword } from '../core/password-hash.js'
import { FailureLimiter } from './auth-limiter.js'
import { readSetupCode, removeSetupCode, setupCodeMatches } from './auth-setup.js'

export const SESSION_COOKIE = 'iothub_session'
/** Failed logins (or setup codes) per client address and per username within a minute before 429. */
export const LOGIN_FAILURES_PER_MINUTE = 5
const USERNAME = /^[A-Za-z0-9._@-]{1,64}$/
export const USERNAME_RULE = '1 to 64 letters, digits, dots, dashes, underscores or @'

export const sha256 = (s: string): string => createHash('sha256').update(s).digest('base64url')

export interface ActiveSession {
  username: string
  csrf: string
  idHash: string
}

/** A refusal with the API's body; `retryAfterSeconds` for 429. */
export class AuthRefusal extends Error {
  constructor(
    readonly status: number,
    readonly error: string,
    message: string,
    readonly retryAfterSeconds?: number,
  ) {
    super(message)
  }
}

export class UiAuth {
  private readonly now: () => number
  private readonly limiter: FailureLimiter
  private readonly idleMs: number
  private readonly maxMs: number
  // last_seen_at is written at most this often per session: a page's requests do not each write to disk.
  private readonly touchEveryMs: number

  constructor(
    private readonly deps: UiAuthDeps,
    private readonly log: Logger,
  ) {
    this.now = deps.now ?? Date.now
    this.limiter = new FailureLimiter({ max: LOGIN_FAILURES_PER_MINUTE, windowMs: 60_000, now: this.now })
    this.idleMs = deps.idleTimeoutSeconds * 1000
    this.maxMs = deps.maxLifetimeSeconds * 1000
    this.touchEveryMs = Math.min(60_000, this.idleMs / 10)
  }

  get secureCookie(): boolean {
    return this.deps.secureCookie
  }

  setupRequired(): boolean {
    return this.deps.store.userCount() === 0
  }

  /** The first user, with the code from the setup code file; the file is deleted once it is used. */
  async setup(ip: string, setupCode: string, username: string, password: string): Promise<{ token: string; session: ActiveSession }> {
    this.checkLimit([`ip:${ip}`])
    if (!this.setupRequired()) throw new AuthRefusal(409, 'already_set_up', 'the web UI has a user already: log in (an operator locked out runs `iothub-edge ui reset-password` on the gateway)')
    const expected = readSetupCode(this.deps.dataDir)
    if (!expected || !setupCodeMatches(setupCode, expected)) {
      this.failed('bad_setup_code', [`ip:${ip}`], { ip })
      throw new AuthRefusal(
        403,
        'bad_setup_code',
        expected
          ? "the setup code is not the one in the gateway's log and in its data folder's ui-setup-code file"
          : 'there is no setup code file (ui-setup-code) in the data folder: run `iothub-edge ui reset-password` on the gateway to make one',
      )
    }
    if (!USERNAME.test(username)) throw new AuthRefusal(400, 'bad_request', `username must be ${USERNAME_RULE}`)
    const problem = passwordProblem(password, username)
    if (problem) throw new AuthRefusal(400, 'weak_password', problem)
    const hash = await hashPassword(password)
    if (!this.deps.store.createFirstUser(username, hash, this.now())) throw new AuthRefusal(409, 'already_set_up', 'the web UI has a user already: log in')
    removeSetupCode(this.deps.dataDir)
    for (const k of [`ip:${ip}`, `user:${username.toLowerCase()}`]) this.limiter.clear(k)
    this.log.info({ username, ip }, `web UI set up: user ${username} created; the setup code is used up and its file deleted`)
    return this.newSession(username)
  }

  async login(ip: string, username: string, password: string): Promise<{ token: string; session: ActiveSession }> {
    const keys = [`ip:${ip}`, `user:${username.toLowerCase()}`]
    this.checkLimit(keys)
    const user = USERNAME.test(username) ? this.deps.store.getUser(username) : undefined
    // An unknown user costs as much as a known one: the answer's time does not tell which exist.
    const check = await verifyPassword(password, user?.passwordHash ?? (await decoyHash()))
    if (!user || !check.ok) {
      this.failed('bad_credentials', keys, { ip, ...(user ? { username } : {}) })
      throw new AuthRefusal(401, 'bad_credentials', 'wrong username or password')
    }
    for (const k of keys) this.limiter.clear(k)
    if (check.stale) this.deps.store.setPassword(user.username, await hashPassword(password), this.now())
    this.purge()
    return this.newSession(user.username)
  }

  /**
   * The session a cookie names, while within its idle timeout and lifetime. Its last use is
   * recorded unless `use` is false: a page refreshing what it shows, or opening its live stream,
   * is not the technician doing something, and must not keep an unattended browser signed in.
   */
  session(token: string | undefined, use = true): ActiveSession | undefined {
    if (!token) return undefined
    const idHash = sha256(token)
    const s = this.deps.store.getSession(idHash)
    if (!s) return undefined
    const now = this.now()
    if (now - s.lastSeenAt >= this.idleMs || now - s.createdAt >= this.maxMs) {
      this.deps.store.deleteSession(idHash)
      return undefined
    }
    if (use && now - s.lastSeenAt >= this.touchEveryMs) this.deps.store.touchSession(idHash, now)
    return { username: s.username, csrf: s.csrf, idHash }
  }

  /** Whether a session is still on (not expired, not ended), without counting this as its use: for long-lived streams. */
  alive(idHash: string): boolean {
    const s = this.deps.store.getSession(idHash)
    const now = this.now()
    return s !== undefined && now - s.lastSeenAt < this.idleMs && now - s.createdAt < this.maxMs
  }

  logout(session: ActiveSession): void {
    this.deps.store.deleteSession(session.idHash)
  }

  /** The user's own password; the user's other sessions end. */
  async changePassword(ip: string, session: ActiveSession, current: string, next: string): Promise<void> {
    const keys = [`ip:${ip}`, `user:${session.username.toLowerCase()}`]
    this.checkLimit(keys)
    const user = this.deps.store.getUser(session.username)
    if (!user || !(await verifyPassword(current, user.passwordHash)).ok) {
      this.failed('bad_credentials', keys, { ip, username: session.username })
      throw new AuthRefusal(401, 'bad_credentials', 'the current password is wrong')
    }
    const problem = passwordProblem(next, session.username)
    if (problem) throw new AuthRefusal(400, 'weak_password', problem)
    this.deps.store.setPassword(user.username, await hashPassword(next), this.now())
    this.deps.store.deleteSessionsOf(user.username, session.idHash)
    this.log.info({ username: user.username, ip }, 'web UI password changed; the user\'s other sessions ended')
  }

  // --- API tokens ---------------------------------------------------------------------------

  /** A new token (shown this once); 32 random bytes, kept as its SHA-256. */
  createToken(name: string, createdBy: string | null): { id: string; name: string; token: string } {
    const id = randomBytes(8).toString('hex')
    const token = `ihe_${randomBytes(32).toString('base64url')}`
    this.deps.store.createToken({ id, name, tokenHash: sha256(token), createdBy, createdAt: this.now() })
    this.log.info({ id, name, createdBy }, `API token "${name}" created`)
    return { id, name, token }
  }

  listTokens(): ApiTokenInfo[] {
    return this.deps.store.listTokens()
  }

  tokenExists(id: string): boolean {
    return this.deps.store.getToken(id) !== undefined
  }

  revokeToken(id: string): boolean {
    const done = this.deps.store.deleteToken(id)
    if (done) this.log.info({ id }, 'API token revoked')
    return done
  }

  /** The API token a bearer value is, if any; its last use is recorded (at most once a minute). */
  apiToken(bearer: string): ApiTokenInfo | undefined {
    const t = this.deps.store.findToken(sha256(bearer))
    if (t && (t.lastUsedAt === null || this.now() - t.lastUsedAt >= 60_000)) this.deps.store.touchToken(t.id, this.now())
    return t
  }

  // --- inside -------------------------------------------------------------------------------

  private newSession(username: string): { token: string; session: ActiveSession } {
    const token = randomBytes(32).toString('base64url')
    const csrf = randomBytes(24).toString('base64url')
    const now = this.now()
    const idHash = sha256(token)
    this.deps.store.createSession({ idHash, username, csrf, createdAt: now, lastSeenAt: now })
    return { token, session: { username, csrf, idHash } }
  }

  private purge(): void {
    const now = this.now()
    this.deps.store.purgeSessions(now - this.idleMs, now - this.maxMs)
  }

  private checkLimit(keys: string[]): void {
    const wait = Math.max(...keys.map((k) => this.limiter.blockedFor(k)))
    if (wait > 0) {
      this.deps.countFailure?.('rate_limited')
      throw new AuthRefusal(429, 'rate_limited', `too many failed attempts: try again in ${Math.ceil(wait / 1000)} s`, Math.ceil(wait / 1000))
    }
  }

  private failed(reason: 'bad_credentials' | 'bad_setup_code', keys: string[], who: { ip: string; username?: string }): void {
    this.deps.countFailure?.(reason)
    // Logged once per burst: when a key reaches the limit, not at every failure.
    const tripped = keys.filter((k) => this.limiter.fail(k))
    if (tripped.length) {
      this.log.warn(
        { ...who, by: tripped.map((k) => k.slice(0, k.indexOf(':'))), code: ErrorCodes.UI_LOGIN_RATE_LIMITED },
        `${LOGIN_FAILURES_PER_MINUTE} failed web UI ${reason === 'bad_setup_code' ? 'setup codes' : 'logins'} within a minute from ${who.ip}: further attempts are refused (429) for a minute; if this is not a technician mistyping, someone is guessing`,
      )
    }
  }
}
