// The web app, built and not listening (fastify's app.js; server.ts listens): tests drive it
// with inject(). Everything under /api/ except /api/health and /api/auth/* needs a credential: the
// bearer token, an API token, or the web UI's session cookie (src/web/auth.ts). Adapters' device
// routes live under /devices/, outside that scope: devices authenticate there with their own
// credentials, checked by the adapter (they never hold the technician's token).
import Fastify, { type FastifyError, type FastifyInstance, type FastifyPluginAsync, type FastifyReply, type FastifyRequest } from 'fastify'
import fastifyCookie from '@fastify/cookie'
import type { Logger } from '../core/log.js'
import { requireCredentials } from './auth.js'
import { UiAuth } from './auth-service.js'
import { authRoutes } from './routes/auth.js'
import { tokenRoutes } from './routes/tokens.js'
import type { AdapterRoutes, WebDeps } from './deps.js'
import { commandRoutes } from './routes/commands.js'
import { deviceRoutes } from './routes/devices.js'
import { healthRoutes } from './routes/health.js'
import { historyRoutes } from './routes/history.js'
import { liveRoutes } from './routes/live.js'
import { metricsRoutes } from './routes/metrics.js'
import { outboxRoutes } from './routes/outbox.js'
import { rulesRoutes } from './routes/rules.js'
import { uiRoutes } from './routes/ui.js'
import { describeValidationError, schemaCompilers } from './validation.js'

/** The server's TLS key and certificate (PEM), when it speaks https (src/web/tls.ts). */
export interface HttpsOptions {
  key: string
  cert: string
}

export function buildApp(deps: WebDeps, https?: HttpsOptions): FastifyInstance {
  const log = deps.log.child({ component: 'web' })
  const ui = deps.ui && new UiAuth(deps.ui, log)
  const checkToken = requireCredentials(deps.apiToken, deps.apiTokenWhere, ui)
  const common = { logger: false, bodyLimit: 1 << 20, schemaErrorFormatter: describeValidationError, schemaController: { compilersFactory: schemaCompilers } } as const
  // Two calls: fastify's types tell an https server from a plain one by the option's presence.
  const app = (https ? Fastify({ ...common, https }) : Fastify(common)) as unknown as FastifyInstance
  app.decorateRequest('credential', null)
  void app.register(fastifyCookie)
  // On every answer, pages, API and errors alike; the pages' Content-Security-Policy is set where they are served.
  app.addHook('onRequest', async (_req, reply) => {
    reply.header('x-content-type-options', 'nosniff').header('referrer-policy', 'no-referrer').header('x-frame-options', 'DENY')
  })
  app.setErrorHandler((err: FastifyError, req, reply) => {
    const status = err.statusCode ?? 500
    // Schema failures and what fastify refuses before a handler runs (bad JSON, too large, not JSON):
    // the same `{error, message}` body as the routes' own errors.
    if (status < 500) return reply.code(status).send(clientError(status, err))
    log.error({ err, method: req.method, url: req.url }, 'request failed')
    return reply.code(500).send({ error: 'internal', message: 'the gateway could not answer this request; its log says why' })
  })
  app.setNotFoundHandler(notFound)

  void app.register(healthRoutes, deps)
  void app.register(metricsRoutes, deps)
  if (ui) void app.register(authRoutes, { prefix: '/api/auth', ui })
  // The token guards a scope rather than URLs that start with "/api/": the router decodes the path
  // (/%61pi/devices is /api/devices), so a string test on the raw URL can be walked around.
  void app.register(
    async (api) => {
      api.addHook('onRequest', checkToken)
      // Set after the hook, so an unknown /api/ path without the token answers 401, not 404.
      api.setNotFoundHandler(notFound)
      void api.register(outboxRoutes, deps)
      void api.register(deviceRoutes, deps)
      void api.register(commandRoutes, deps)
      void api.register(rulesRoutes, deps)
      void api.register(historyRoutes, deps)
      void api.register(liveRoutes, deps)
      if (ui) void api.register(tokenRoutes, { ui })
      for (const routes of deps.adapterRoutes) void api.register(adapterScope(routes, log), { prefix: `/adapters/${routes.adapter}` })
      for (const s of deps.serviceRoutes ?? []) if (s.api) void api.register(s.api, { prefix: `/${s.prefix}` })
    },
    { prefix: '/api' },
  )
  // A scope of its own per adapter, under a fixed prefix: a device plugin cannot reach into /api.
  for (const routes of deps.deviceRoutes ?? []) void app.register(adapterScope(routes, log, '/devices/'), { prefix: '/devices' })
  for (const s of deps.serviceRoutes ?? []) if (s.files) void app.register(s.files, { prefix: `/${s.prefix}` })
  if (deps.uiDir) void app.register(uiRoutes, { dir: deps.uiDir })
  return app
}

// Fastify's own refusals, in the API's words (its codes: fastify's lib/errors.js).
const FRAMEWORK_ERRORS: Record<string, { error: string; message: string }> = {
  FST_ERR_CTP_INVALID_MEDIA_TYPE: { error: 'unsupported_media_type', message: 'send the body as JSON, with content-type: application/json' },
  FST_ERR_CTP_INVALID_CONTENT_LENGTH: { error: 'bad_request', message: 'the content-length does not match the body' },
  FST_ERR_CTP_BODY_TOO_LARGE: { error: 'payload_too_large', message: 'the body is larger than 1 MiB' },
  FST_ERR_CTP_EMPTY_JSON_BODY: { error: 'bad_request', message: 'body must be a JSON object (it is empty, yet content-type says JSON)' },
  FST_ERR_CTP_INVALID_JSON_BODY: { error: 'bad_request', message: 'body is not valid JSON' },
}

function clientError(status: number, err: FastifyError): { error: string; message: string } {
  const known = FRAMEWORK_ERRORS[err.code]
  if (known) return known
  // A body that does not parse (JSON.parse's SyntaxError) carries no fastify code.
  if (err instanceof SyntaxError) return { error: 'bad_request', message: `body is not valid JSON (${err.message})` }
  return { error: status === 404 ? 'not_found' : status === 413 ? 'payload_too_large' : status === 415 ? 'unsupported_media_type' : 'bad_request', message: err.message }
}

function notFound(req: FastifyRequest, reply: FastifyReply): FastifyReply {
  return reply.code(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` })
}

/** One adapter's routes failing to register is logged and leaves the rest of the API up. */
function adapterScope({ adapter, plugin }: AdapterRoutes, log: Logger, where = `/api/adapters/${adapter}/`): FastifyPluginAsync {
  return async (scope, opts) => {
    try {
      await plugin(scope, opts)
    } catch (err) {
      log.error({ err, adapter }, `the ${adapter} adapter's routes failed to register: some of ${where} may be missing`)
    }
  }
}
