// The store's salvage report (docs/operators/outbox.md, "Storage failures"): GET shows the salvage
// of a damaged gateway.db that nobody has acknowledged yet; POST .../ack acknowledges it, and the
// health stops saying `store_salvaged`. Mounted under /api/store/, behind the API token.
import { Type } from '@sinclair/typebox'
import type { FastifyPluginAsync } from 'fastify'
import type { SalvageReport } from '../../store/salvage.js'
import { SalvageBody } from './health.js'

export interface SalvageDesk {
  salvage(): SalvageReport | undefined
  /** false when there was nothing to acknowledge */
  acknowledge(): boolean
}

export function storeRoutes(desk: SalvageDesk): FastifyPluginAsync {
  return async (app) => {
    app.get('/salvage', { schema: { response: { 200: Type.Object({ pending: Type.Boolean(), salvage: Type.Optional(SalvageBody) }) } } }, async () => {
      const salvage = desk.salvage()
      return salvage ? { pending: true, salvage } : { pending: false }
    })
    app.post('/salvage/ack', { schema: { response: { 200: Type.Object({ acknowledged: Type.Boolean() }) } } }, async () => ({ acknowledged: desk.acknowledge() }))
  }
}
