// GET /metrics: Prometheus text, no token (scrapers rarely carry one; nothing secret is in it).
import type { FastifyPluginAsync } from 'fastify'
import type { WebDeps } from '../deps.js'

export const metricsRoutes: FastifyPluginAsync<Pick<WebDeps, 'metrics'>> = async (app, deps) => {
  app.get('/metrics', async (_req, reply) => {
    const { contentType, body } = await deps.metrics()
    return reply.type(contentType).send(body)
  })
}
