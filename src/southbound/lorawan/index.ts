// The LoRaWAN adapter's entry point for the adapter registry (loaded only when `lorawan:` is
// configured, so the ChirpStack package loads only then), with its diagnostics route under
// /api/adapters/lorawan/.
import type { FastifyPluginAsync } from 'fastify'
import type { AdapterModule } from '../adapter-module.js'
import { LorawanAdapter } from './lorawan-adapter.js'
import type { LorawanConfig } from './schema.js'

export const adapterModule: AdapterModule<LorawanConfig> = {
  create: (ctx, config) => {
    const adapter = new LorawanAdapter(ctx, config)
    // GET /api/adapters/lorawan/devices: per LoRaWAN child its last uplink, radio quality, frame
    // counter, battery, ChirpStack log counts and downlinks still followed.
    const routes: FastifyPluginAsync = async (app) => {
      app.get('/devices', async () => adapter.diagnostics())
    }
    return { adapter, routes }
  },
}
