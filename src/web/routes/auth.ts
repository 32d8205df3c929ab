// /api/auth/*: the web UI's first-run setup, login, logout, password change (docs/integrators/api.md,
// /work/notes/ui-contract.md). Outside the credential guard: state, setup and login are how a
// browser gets a credential. Setup and login refuse cross-site requests too (login CSRF).
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'
import { AuthRefusal, SESSION_COOKIE, type ActiveSession, type UiAuth } from '../auth-service.js'
import { BACKGROUND_HEADER, clearSessionCookie, crossSiteOrMissingCsrf, csrfRefusal, sameOrigin, setSessionCookie } from '../auth.js'

const Str = (description: string, max = 256) => Type.String({ maxLength: max, description })
const SetupBody = Type.Object(
  {
    setupCode: Str('the setup code from the gateway\'s log or its data folder\'s ui-setup-code file', 64),
    username: Str('a username (1 to 64 letters, digits, dots, dashes, underscores or @)', 64),
    password: Str('a password of 10 to 256 characters'),
  },
  { additionalProperties: false },
)
const LoginBody = Type.Object({ username: Str('a string of at most 64 characters', 64), password: Str('a string of at most 256 characters') }, { additionalProperties: false })
const PasswordBody = Type.Object(
  { currentPassword: Str('a string of at most 256 characters'), newPassword: Str('a password of 10 to 256 characters') },
  { additionalProperties: false },
)

export const authRoutes: FastifyPluginAsync<{ ui: UiAuth }> = async (app, { ui }) => {
  app.addHook('onRequest', async (_req, reply) => {
    reply.header('cache-control', 'no-store')
  })

  app.get('/state', async (req) => {
    // Another site never learns the session's CSRF token (nor that there is a session).
    // The app's own check after its live stream was refused is not the user's doing (BACKGROUND_HEADER).
    const session = sameOrigin(req) ? ui.session(req.cookies[SESSION_COOKIE], req.headers[BACKGROUND_HEADER] === undefined) : undefined
    return { setupRequired: ui.setupRequired(), user: session ? { username: session.username } : null, csrfToken: session?.csrf ?? null }
  })

  app.post<{ Body: Static<typeof SetupBody> }>('/setup', { schema: { body: SetupBody } }, async (req, reply) => {
    if (!sameOrigin(req)) return reply.code(403).send(csrfRefusal('refused: setup from another site'))
    return signedIn(reply, ui, () => ui.setup(req.ip, req.body.setupCode, req.body.username, req.body.password))
  })

  app.post<{ Body: Static<typeof LoginBody> }>('/login', { schema: { body: LoginBody } }, async (req, reply) => {
    if (!sameOrigin(req)) return reply.code(403).send(csrfRefusal('refused: a login from another site'))
    return signedIn(reply, ui, async () => {
      const done = await ui.login(req.ip, req.body.username, req.body.password)
      // A new session replaces the one the browser had (no fixation).
      const old = ui.session(req.cookies[SESSION_COOKIE])
      if (old) ui.logout(old)
      return done
    })
  })

  app.post('/logout', async (req, reply) => {
    const session = ui.session(req.cookies[SESSION_COOKIE])
    if (session) {
      const refused = crossSiteOrMissingCsrf(req, session)
      if (refused) return reply.code(403).send(csrfRefusal(refused))
      ui.logout(session)
    }
    clearSessionCookie(reply, ui.secureCookie)
    return reply.code(204).send()
  })

  app.post<{ Body: Static<typeof PasswordBody> }>('/password', { schema: { body: PasswordBody } }, async (req, reply) => {
    const session = withSession(req, reply, ui)
    if (!session) return reply
    try {
      await ui.changePassword(req.ip, session, req.body.currentPassword, req.body.newPassword)
    } catch (err) {
      return refusal(reply, err)
    }
    return reply.code(204).send()
  })
}

/** The session of a state-changing request, or undefined with the 401/403 sent. */
function withSession(req: FastifyRequest, reply: FastifyReply, ui: UiAuth): ActiveSession | undefined {
  const session = ui.session(req.cookies[SESSION_COOKIE])
  if (!session) {
    void reply.code(401).send({ error: 'unauthorized', message: 'log in first (the session has expired or ended)' })
    return undefined
  }
  const refused = crossSiteOrMissingCsrf(req, session)
  if (refused) {
    void reply.code(403).send(csrfRefusal(refused))
    return undefined
  }
  return session
}

async function signedIn(reply: FastifyReply, ui: UiAuth, act: () => Promise<{ token: string; session: ActiveSession }>): Promise<FastifyReply> {
  try {
    const { token, session } = await act()
    setSessionCookie(reply, token, ui.secureCookie)
    return reply.send({ user: { username: session.username }, csrfToken: session.csrf })
  } catch (err) {
    return refusal(reply, err)
  }
}

function refusal(reply: FastifyReply, err: unknown): FastifyReply {
  if (!(err instanceof AuthRefusal)) throw err
  if (err.retryAfterSeconds !== undefined) reply.header('retry-after', String(err.retryAfterSeconds))
  return reply.code(err.status).send({ error: err.error, message: err.message })
}
