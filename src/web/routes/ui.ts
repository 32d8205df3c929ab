// The technician web app (ui/, bundled by scripts/build-ui.mjs into dist/ui/), served by the
// gateway itself: sites often have no internet, so nothing comes from a CDN.
// - `/` and every app route under `/ui/` answer index.html, never cached (it names the current
//   hashed assets) and with a strict Content-Security-Policy: only this origin's scripts, styles
//   and connections, no framing.
// - `/assets/*` are content-hashed: cached for a year as immutable; the `.br`/`.gz` the build wrote
//   are chosen by Accept-Encoding, so a slow ARM box never compresses on the fly.
// App routes live under /ui/ so they can never shadow /api, /devices (HTTP ingest), /ota, /metrics.
// - The assets are served by `@fastify/static` in a small fastify instance of their own, made by the
//   first asset request: a gateway nobody opens the UI of never loads it (with glob and send, ~1 MB
//   of heap; docs/performance.md "2026-12-03"). The app's own headers (nosniff, ...) are kept.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import type { FastifyInstance, FastifyPluginAsync, FastifyReply, FastifyRequest } from 'fastify'

/** Where `npm run build` puts the app: {package root}/dist/ui (this file is src/web/routes or dist/web/routes). */
export const DEFAULT_UI_DIR = fileURLToPath(new URL('../../../dist/ui/', import.meta.url))

export const UI_CONTENT_SECURITY_POLICY = [
  "default-src 'self'",
  "script-src 'self'",
  "style-src 'self'",
  "connect-src 'self'",
  "img-src 'self' data:",
  "frame-ancestors 'none'",
  "base-uri 'none'",
  "form-action 'self'",
].join('; ')

export interface UiRoutesOptions {
  /** The build folder: index.html and assets/. */
  dir: string
}

// nosniff, no-referrer and DENY framing are set on every answer by the app (app.ts).
function setPageHeaders(reply: FastifyReply): FastifyReply {
  return reply
    .header('content-security-policy', UI_CONTENT_SECURITY_POLICY)
    .header('cache-control', 'no-cache')
    .type('text/html; charset=utf-8')
}

export const uiRoutes: FastifyPluginAsync<UiRoutesOptions> = async (app, { dir }) => {
  const indexFile = path.join(dir, 'index.html')
  // Read once: a few hundred bytes, and it must match the assets this process serves.
  const index = existsSync(indexFile) ? readFileSync(indexFile) : undefined
  const page = async (_req: unknown, reply: FastifyReply): Promise<FastifyReply> => {
    if (!index) {
      return reply.code(503).send({ error: 'ui_not_built', message: `the web UI is not built (${indexFile} is missing): run \`npm run build\`` })
    }
    return setPageHeaders(reply).send(index)
  }
  app.get('/', page)
  app.get('/ui', page)
  app.get('/ui/*', page)
  if (!index) return
  let assets: Promise<FastifyInstance> | undefined
  app.get('/assets/*', async (req, reply) => {
    const server = await (assets ??= assetServer(path.join(dir, 'assets')).catch((err: unknown) => {
      assets = undefined
      throw err
    }))
    // What the app set on this answer so far (its onRequest headers) goes out with the file.
    for (const [name, value] of Object.entries(reply.getHeaders())) if (value !== undefined) reply.raw.setHeader(name, value)
    reply.hijack()
    server.routing(req.raw, reply.raw)
  })
}

/** The hashed assets' own server (not listening: it answers the requests handed to it). */
async function assetServer(root: string): Promise<FastifyInstance> {
  const [{ default: Fastify }, { default: fastifyStatic }] = await Promise.all([import('fastify'), import('@fastify/static')])
  const server = Fastify({ logger: false })
  server.setNotFoundHandler((req: FastifyRequest, reply: FastifyReply) => reply.code(404).send({ error: 'not_found', message: `no route ${req.method} ${req.url.split('?')[0]}` }))
  await server.register(fastifyStatic, {
    root,
    prefix: '/assets/',
    preCompressed: true,
    immutable: true,
    maxAge: '365d',
    index: false,
    dotfiles: 'deny',
    decorateReply: false,
    // The hashed names are the versions; no revalidation needed.
    etag: false,
    lastModified: false,
  })
  await server.ready()
  return server
}
