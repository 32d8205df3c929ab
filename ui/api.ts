// The gateway's JSON API as the app calls it: same origin, the session cookie, and the CSRF token
// on every state-changing request (docs/integrators/api.md, "Web UI sign-in"). A 401 anywhere
// means the session is gone: the app shows the sign-in page again.
import { signal } from '@preact/signals'

export type AuthState =
  | { kind: 'loading' }
  | { kind: 'setup' }
  | { kind: 'login'; expired?: boolean }
  | { kind: 'in'; username: string | null }

export const auth = signal<AuthState>({ kind: 'loading' })
let csrfToken: string | null = null

export class ApiError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message)
  }
}

interface Options {
  method?: 'GET' | 'POST' | 'PATCH' | 'PUT' | 'DELETE'
  body?: unknown
  /** A raw body (an OTA image), sent as application/octet-stream. */
  raw?: Blob
  /**
   * A refresh the page makes by itself (polling): answered as any request, but it does not count
   * as the session's use, so an unattended browser still reaches the idle timeout.
   */
  background?: boolean
}

export async function api<T>(path: string, opts: Options = {}): Promise<T> {
  const method = opts.method ?? 'GET'
  const headers: Record<string, string> = { accept: 'application/json' }
  if (method !== 'GET' && csrfToken) headers['x-csrf-token'] = csrfToken
  if (opts.background) headers['x-background'] = '1'
  let body: BodyInit | undefined
  if (opts.raw) {
    headers['content-type'] = 'application/octet-stream'
    body = opts.raw
  } else if (opts.body !== undefined) {
    headers['content-type'] = 'application/json'
    body = JSON.stringify(opts.body)
  }
  const res = await fetch(path, { method, headers, body, credentials: 'same-origin' })
  if (res.status === 204) return undefined as T
  const text = await res.text()
  let parsed: unknown = text
  if ((res.headers.get('content-type') ?? '').includes('json') && text) parsed = JSON.parse(text)
  if (!res.ok) {
    const e = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as { error?: string; message?: string }
    if (res.status === 401 && auth.value.kind === 'in' && !path.startsWith('/api/auth/')) auth.value = { kind: 'login', expired: true }
    throw new ApiError(res.status, e.error ?? `http_${res.status}`, e.message ?? e.error ?? `${res.status} ${res.statusText}`)
  }
  return parsed as T
}

interface AuthStateBody {
  setupRequired: boolean
  user: { username: string } | null
  csrfToken: string | null
}

/**
 * After the live stream was refused (the gateway ends it when the session ends, and the browser's
 * reconnect is then answered 401): whether the session is still on. If it is not, the app shows
 * the sign-in page with "your session ended", also on a page that polls nothing.
 */
export async function sessionStillOn(): Promise<boolean> {
  try {
    const s = await api<AuthStateBody>('/api/auth/state', { background: true })
    if (s.user) return true
    if (auth.value.kind === 'in') auth.value = { kind: 'login', expired: true }
    return false
  } catch {
    return true // the gateway is away (restarting): the session may well be on when it is back
  }
}

export async function loadAuthState(): Promise<void> {
  try {
    const s = await api<AuthStateBody>('/api/auth/state')
    csrfToken = s.csrfToken
    auth.value = s.setupRequired ? { kind: 'setup' } : s.user ? { kind: 'in', username: s.user.username } : { kind: 'login' }
  } catch {
    auth.value = { kind: 'login' }
  }
}

interface SignedIn {
  user: { username: string }
  csrfToken: string
}

export async function login(username: string, password: string): Promise<void> {
  const r = await api<SignedIn>('/api/auth/login', { method: 'POST', body: { username, password } })
  csrfToken = r.csrfToken
  auth.value = { kind: 'in', username: r.user.username }
}

export async function setup(setupCode: string, username: string, password: string): Promise<void> {
  const r = await api<SignedIn>('/api/auth/setup', { method: 'POST', body: { setupCode, username, password } })
  csrfToken = r.csrfToken
  auth.value = { kind: 'in', username: r.user.username }
}

export async function logout(): Promise<void> {
  try {
    await api('/api/auth/logout', { method: 'POST' })
  } finally {
    csrfToken = null
    auth.value = { kind: 'login' }
  }
}

/** `{p}/{d}` for a URL path, each part encoded. */
export const devicePath = (p: string, d: string): string => `${encodeURIComponent(p)}/${encodeURIComponent(d)}`
