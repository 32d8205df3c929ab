// What an adapter folder hands the registry: how to build the adapter from its context and its own
// section of the config, and optionally route plugins: diagnostics under /api/adapters/{name}/
// (behind the API token), and device-facing routes under /devices/ (no token: the adapter
// authenticates each device itself, e.g. HTTP ingest with the device's own credentials).
import type { FastifyPluginAsync } from 'fastify'
import type { AdapterContext } from '../core/adapter-context.js'
import type { SouthboundAdapter } from '../core/types.js'

export interface AdapterInstance {
  adapter: SouthboundAdapter
  /**
   * Why the adapter is degraded right now, if it is (e.g. `port_down:line1`): reported in
   * /api/health as `{adapter}:{reason}` while the adapter keeps running.
   */
  health?: () => string[]
  routes?: FastifyPluginAsync
  /**
   * Routes devices call, mounted under /devices/ on the gateway's HTTP listener, outside /api and
   * without the API token: the plugin must authenticate every request with the device's own
   * credentials (secure by default: nothing in it may answer an anonymous caller).
   */
  deviceRoutes?: FastifyPluginAsync
  /**
   * Publish on the adapter's local broker for trusted on-site consumers (the rules' `republish`);
   * only an adapter that runs a broker offers it.
   */
  localPublish?: (topic: string, payload: Buffer, retain: boolean) => Promise<void>
}

export interface AdapterModule<C> {
  create(ctx: AdapterContext, config: C): AdapterInstance
}
