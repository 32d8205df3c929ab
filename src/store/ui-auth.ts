// The web UI's accounts in the gateway's database (migration 7): users with their scrypt hashes,
// server-side sessions and API tokens. Only SQL here; hashing, expiry and the rules of who may do
// what are the web's (src/web/auth-service.ts). Session ids and tokens arrive already hashed.
import type { Statement } from 'better-sqlite3'
import type { Db } from './db.js'

export interface UiUser {
  username: string
  /** `scrypt$N$r$p$salt$hash` (base64url), see src/core/password-hash.ts. */
  passwordHash: string
  createdAt: number
  updatedAt: number
}

export interface UiSession {
  idHash: string
  username: string
  csrf: string
  createdAt: number
  lastSeenAt: number
}

export interface ApiTokenInfo {
  id: string
  name: string
  createdBy: string | null
  createdAt: number
  lastUsedAt: number | null
}

type Name =
  | 'userCount'
  | 'getUser'
  | 'insertUser'
  | 'setPassword'
  | 'insertSession'
  | 'getSession'
  | 'touchSession'
  | 'deleteSession'
  | 'deleteSessionsOf'
  | 'deleteSessionsBefore'
  | 'insertToken'
  | 'listTokens'
  | 'findToken'
  | 'getToken'
  | 'touchToken'
  | 'deleteToken'

export class UiAuthStore {
  private readonly st: Record<Name, Statement>

  constructor(private readonly db: Db) {
    this.st = {
      userCount: db.prepare('SELECT count(*) AS n FROM ui_users'),
      getUser: db.prepare('SELECT username, password_hash AS passwordHash, created_at AS createdAt, updated_at AS updatedAt FROM ui_users WHERE username = ?'),
      insertUser: db.prepare('INSERT INTO ui_users (username, password_hash, created_at, updated_at) VALUES (?, ?, ?, ?)'),
      setPassword: db.prepare('UPDATE ui_users SET password_hash = ?, updated_at = ? WHERE username = ?'),
      insertSession: db.prepare('INSERT INTO ui_sessions (id_hash, username, csrf, created_at, last_seen_at) VALUES (?, ?, ?, ?, ?)'),
      getSession: db.prepare('SELECT id_hash AS idHash, username, csrf, created_at AS createdAt, last_seen_at AS lastSeenAt FROM ui_sessions WHERE id_hash = ?'),
      touchSession: db.prepare('UPDATE ui_sessions SET last_seen_at = ? WHERE id_hash = ?'),
      deleteSession: db.prepare('DELETE FROM ui_sessions WHERE id_hash = ?'),
      deleteSessionsOf: db.prepare('DELETE FROM ui_sessions WHERE username = ? AND id_hash IS NOT ?'),
      deleteSessionsBefore: db.prepare('DELETE FROM ui_sessions WHERE last_seen_at < ? OR created_at < ?'),
      insertToken: db.prepare('INSERT INTO api_tokens (id, name, token_hash, created_by, created_at) VALUES (?, ?, ?, ?, ?)'),
      listTokens: db.prepare('SELECT id, name, created_by AS createdBy, created_at AS createdAt, last_used_at AS lastUsedAt FROM api_tokens ORDER BY created_at, id'),
      findToken: db.prepare('SELECT id, name, created_by AS createdBy, created_at AS createdAt, last_used_at AS lastUsedAt FROM api_tokens WHERE token_hash = ?'),
      getToken: db.prepare('SELECT id, name, created_by AS createdBy, created_at AS createdAt, last_used_at AS lastUsedAt FROM api_tokens WHERE id = ?'),
      touchToken: db.prepare('UPDATE api_tokens SET last_used_at = ? WHERE id = ?'),
      deleteToken: db.prepare('DELETE FROM api_tokens WHERE id = ?'),
    }
  }

  userCount(): number {
    return (this.st.userCount.get() as { n: number }).n
  }

  getUser(username: string): UiUser | undefined {
    return this.st.getUser.get(username) as UiUser | undefined
  }

  /** The first user, only while there is none (one transaction): false when one exists already. */
  createFirstUser(username: string, passwordHash: string, now: number): boolean {
    return this.db.transaction(() => {
      if (this.userCount() > 0) return false
      this.st.insertUser.run(username, passwordHash, now, now)
      return true
    })()
  }

  setPassword(username: string, passwordHash: string, now: number): void {
    this.st.setPassword.run(passwordHash, now, username)
  }

  /** Every user and their sessions removed: the next visit sets up the admin again (`ui reset-password`). API tokens stay. */
  removeUsers(): number {
    return this.db.transaction(() => {
      this.db.prepare('DELETE FROM ui_sessions').run()
      return this.db.prepare('DELETE FROM ui_users').run().changes
    })()
  }

  createSession(s: UiSession): void {
    this.st.insertSession.run(s.idHash, s.username, s.csrf, s.createdAt, s.lastSeenAt)
  }

  getSession(idHash: string): UiSession | undefined {
    return this.st.getSession.get(idHash) as UiSession | undefined
  }

  touchSession(idHash: string, now: number): void {
    this.st.touchSession.run(now, idHash)
  }

  deleteSession(idHash: string): void {
    this.st.deleteSession.run(idHash)
  }

  /** A user's sessions, except one (the one that changed the password). */
  deleteSessionsOf(username: string, except?: string): void {
    this.st.deleteSessionsOf.run(username, except ?? null)
  }

  /** Sessions idle since before `idleBefore` or created before `createdBefore`. */
  purgeSessions(idleBefore: number, createdBefore: number): number {
    return this.st.deleteSessionsBefore.run(idleBefore, createdBefore).changes
  }

  createToken(t: { id: string; name: string; tokenHash: string; createdBy: string | null; createdAt: number }): void {
    this.st.insertToken.run(t.id, t.name, t.tokenHash, t.createdBy, t.createdAt)
  }

  listTokens(): ApiTokenInfo[] {
    return this.st.listTokens.all() as ApiTokenInfo[]
  }

  findToken(tokenHash: string): ApiTokenInfo | undefined {
    return this.st.findToken.get(tokenHash) as ApiTokenInfo | undefined
  }

  getToken(id: string): ApiTokenInfo | undefined {
    return this.st.getToken.get(id) as ApiTokenInfo | undefined
  }

  touchToken(id: string, now: number): void {
    this.st.touchToken.run(now, id)
  }

  deleteToken(id: string): boolean {
    return this.st.deleteToken.run(id).changes > 0
  }
}
