// The technician web app (ui/, bundled by scripts/build-ui.mjs into dist/ui/), served by the
// gateway itself: sites often have no internet, so nothing comes from a CDN.
// - `/` and every app route under `/ui/` answer index.html, never cached (it names the current
//   hashed assets) and with a strict Content-Security-Policy: only this origin's scripts, styles
//   and connections, no framing.
// - `/assets/*` are content-hashed: cached for a year as immutable; the `.br`/`.gz` the build wrote
//   are chosen by Accept-Encoding, so a slow ARM box never compresses on the fly.
// App routes live under /ui/ so they can never shadow /api, /devices (HTTP ingest), /ota, /metrics.
import { existsSync, readFileSync } from 'node:fs'
import path from 'node:path'
import { fileURLToPath } from 'node:url'
import fastifyStatic from '@fastify/static'
import type { FastifyPluginAsync, FastifyReply } from 'fastify'

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
  await app.register(fastifyStatic, {
    root: path.join(dir, 'assets'),
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
}
