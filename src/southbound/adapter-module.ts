// What an adapter folder hands the registry: how to build the adapter from its context and its own
// section of the config, and optionally a route plugin (diagnostics under /api/adapters/{name}/).
import type { FastifyPluginAsync } from 'fastify'
import type { AdapterContext } from '../core/adapter-context.js'
import type { SouthboundAdapter } from '../core/types.js'

export interface AdapterInstance {
  adapter: SouthboundAdapter
  routes?: FastifyPluginAsync
}

export interface AdapterModule<C> {
  create(ctx: AdapterContext, config: C): AdapterInstance
}
