// The API's credentials: `Authorization: Bearer <token>` (the api-token file's token, or an API
// token made in /api/tokens), or the web UI's session cookie. A cookie is ambient (the browser adds
// it by itself), so a request carrying one must come from the gateway's own pages: same-origin by
// Origin / Sec-Fetch-Site, and with the session's CSRF token on every state-changing method. A
// bearer token is never ambient, so it needs neither.
import { createHash, timingSafeEqual } from 'node:crypto'
import type { FastifyReply, FastifyRequest } from 'fastify'
import { SESSION_COOKIE, type ActiveSession, type UiAuth } from './auth-service.js'

/** The 401 body; `where`: where an operator finds the token (the file, or the config key). */
export const unauthorized = (where = 'api-token in the gateway\'s data folder'): { error: string; message: string } => ({
  error: 'unauthorized',
  message: `send Authorization: Bearer <token> (the token is in ${where})`,
})

export const CSRF_HEADER = 'x-csrf-token'
/**
 * Sent by the app's own refreshes (a page polling what it shows): such a request is answered but
 * does not count as the session's use, so an unattended browser still reaches the idle timeout.
 */
export const BACKGROUND_HEADER = 'x-background'
const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE'])

/** How a request was let in: `session` is set for the cookie, `apiTokenId` for an API token. */
export interface Credential {
  kind: 'api-token-file' | 'api-token' | 'session'
  session?: ActiveSession
  apiTokenId?: string
  /**
   * Whether the credential still holds (the session has not expired or ended, the API token is not
   * revoked), without counting as a use: a long-lived answer (an event stream) asks at each ping
   * and ends when it no longer does.
   */
  stillValid(): boolean
}

declare module 'fastify' {
  interface FastifyRequest {
    credential: Credential | null
  }
}

// Both sides are hashed first: timingSafeEqual needs equal lengths, and comparing digests keeps
// the time independent of the length of what was sent.
const digest = (s: string): Buffer => createHash('sha256').update(s).digest()
export const equalSecrets = (a: string, b: string): boolean => timingSafeEqual(digest(a), digest(b))

export const bearerOf = (req: FastifyRequest): string | undefined => /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? '')?.[1]

/**
 * Whether the request comes from a page of this very origin (or no browser said otherwise):
 * Sec-Fetch-Site must be same-origin (or none: typed in the address bar), and an Origin header
 * must name this host. Same-site is refused too: another service on this host (another port) is
 * the same site, and SameSite=Strict cookies go along to it.
 */
export function sameOrigin(req: FastifyRequest): boolean {
  const site = req.headers['sec-fetch-site']
  if (site !== undefined && site !== 'same-origin' && site !== 'none') return false
  const origin = req.headers.origin
  if (origin === undefined) return true
  try {
    return new URL(origin).host === req.headers.host
  } catch {
    return false // "null" (a sandboxed frame, a redirect from elsewhere) or garbage
  }
}

export const csrfRefusal = (why: string): { error: string; message: string } => ({ error: 'csrf', message: why })

/** An onRequest hook; registered on a scope, so it guards that scope's routes however the URL is spelled. */
export function requireCredentials(
  token: string,
  where: string | undefined,
  ui: UiAuth | undefined,
): (req: FastifyRequest, reply: FastifyReply) => Promise<FastifyReply | undefined> {
  if (!token) throw new Error('the web API needs a non-empty token: an empty one would match a missing header')
  const refusal = unauthorized(where)
  return async (req, reply) => {
    const bearer = bearerOf(req)
    if (bearer !== undefined || !ui) {
      if (equalSecrets(bearer ?? '', token)) {
        req.credential = { kind: 'api-token-file', stillValid: () => true }
        return undefined
      }
      const apiToken = bearer !== undefined ? ui?.apiToken(bearer) : undefined
      if (!apiToken || !ui) return reply.code(401).send(refusal)
      req.credential = { kind: 'api-token', apiTokenId: apiToken.id, stillValid: () => ui.tokenExists(apiToken.id) }
      return undefined
    }
    const cookie = req.cookies[SESSION_COOKIE]
    if (cookie === undefined) return reply.code(401).send(refusal)
    // Neither a refresh the app makes by itself nor (re)opening the live stream is the user's doing.
    const use = req.headers[BACKGROUND_HEADER] === undefined && !(req.method === 'GET' && req.routeOptions.url === '/api/events')
    const session = ui.session(cookie, use)
    if (!session) {
      clearSessionCookie(reply, ui.secureCookie)
      return reply.code(401).send({ error: 'unauthorized', message: 'the session has expired or ended: log in again' })
    }
    const refused = crossSiteOrMissingCsrf(req, session)
    if (refused) return reply.code(403).send(csrfRefusal(refused))
    req.credential = { kind: 'session', session, stillValid: () => ui.alive(session.idHash) }
    return undefined
  }
}

/** Why a request with the session cookie is refused (cross-site, or a state change without the CSRF token), or undefined. */
export function crossSiteOrMissingCsrf(req: FastifyRequest, session: ActiveSession): string | undefined {
  if (!sameOrigin(req)) return 'refused: the request comes from another site (Origin / Sec-Fetch-Site); use the gateway\'s own pages, or a bearer token from a script'
  if (!STATE_CHANGING.has(req.method)) return undefined
  const sent = req.headers[CSRF_HEADER]
  if (typeof sent !== 'string' || !equalSecrets(sent, session.csrf)) return `refused: a ${req.method} with the session cookie needs the header ${CSRF_HEADER} (the csrfToken of GET /api/auth/state)`
  return undefined
}

export function setSessionCookie(reply: FastifyReply, token: string, secure: boolean): void {
  reply.setCookie(SESSION_COOKIE, token, { httpOnly: true, sameSite: 'strict', secure, path: '/' })
}

export function clearSessionCookie(reply: FastifyReply, secure: boolean): void {
  reply.clearCookie(SESSION_COOKIE, { httpOnly: true, sameSite: 'strict', secure, path: '/' })
}
