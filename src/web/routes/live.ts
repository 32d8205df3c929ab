// What the technician's pages need besides the registry and the queues: the live stream
// (GET /api/events), the recent logs, the system, and the diagnostics bundle.
import { Type, type Static } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import { levels } from 'pino'
import type { WebDeps } from '../deps.js'
import { diagnosticsBundle } from '../diagnostics.js'
import { systemReader } from '../system-info.js'

const LEVEL_NAMES = Object.keys(levels.values)
const LogsQuery = Type.Object({
  level: Type.Optional(Type.String({ pattern: `^(${LEVEL_NAMES.join('|')}|[0-9]{1,3})$`, description: `one of ${LEVEL_NAMES.join(', ')} (or pino's number)` })),
  limit: Type.Optional(Type.Integer({ minimum: 1, maximum: 10_000, description: 'an integer 1-10000' })),
})
type LogsQuery = Static<typeof LogsQuery>

const OFF = (what: string): { error: string; message: string } => ({ error: 'not_available', message: `${what} is not available in this gateway` })

export const liveRoutes: FastifyPluginAsync<WebDeps> = async (app, deps) => {
  const system = systemReader(deps.support?.version ?? 'unknown', deps.support?.dataDir ?? '.')
  const minLevel = (q: LogsQuery): number => (q.level === undefined ? 0 : /^\d+$/.test(q.level) ? Number(q.level) : levels.values[q.level])
  const lines = (q: LogsQuery, limit: number): string[] => deps.logs?.lines(minLevel(q), limit) ?? []

  // The stream outlives requests: it is ended before the server waits for its connections.
  app.addHook('preClose', async () => deps.live?.close())

  // No HEAD: a stream has no end for a HEAD to wait for.
  app.get('/events', { exposeHeadRoute: false }, async (req, reply) => {
    const live = deps.live
    if (!live) return reply.code(404).send(OFF('the live stream'))
    if (live.full) return reply.code(503).send({ error: 'too_many_streams', message: 'too many live streams are open; close a browser tab and retry' })
    reply.hijack()
    const credential = req.credential
    live.attach(req.raw, reply.raw, credential ? () => credential.stillValid() : undefined)
    return reply
  })

  app.get<{ Querystring: LogsQuery }>('/logs', { schema: { querystring: LogsQuery } }, async (req) => {
    const logs = lines(req.query, req.query.limit ?? 500).map((l) => {
      try {
        const o = JSON.parse(l) as Record<string, unknown>
        const level = typeof o.level === 'number' ? o.level : 30
        return { ...o, levelName: levels.labels[level] ?? String(level) }
      } catch {
        return { msg: l, level: 30, levelName: 'info' }
      }
    })
    return { logs }
  })

  app.get<{ Querystring: LogsQuery }>('/logs/download', { schema: { querystring: LogsQuery } }, async (req, reply) => {
    const text = lines(req.query, req.query.limit ?? Number.MAX_SAFE_INTEGER)
      .map((l) => l + '\n')
      .join('')
    return reply
      .type('text/plain; charset=utf-8')
      .header('content-disposition', `attachment; filename="iothub-edge-logs-${new Date().toISOString().replace(/[:.]/g, '-')}.ndjson"`)
      .send(text)
  })

  app.get('/system', async () => system())

  app.get('/diagnostics', async (_req, reply) => {
    const bundle = await diagnosticsBundle(deps, await system())
    return reply.type('application/gzip').header('content-disposition', `attachment; filename="${bundle.name}"`).send(bundle.body)
  })
}
