// The LoRaWAN adapter's entry point for the adapter registry (loaded only when `lorawan:` is
// configured, so the ChirpStack package loads only then), with its diagnostics routes under
// /api/adapters/lorawan/ and its command-line tool (`iothub-edge lorawan import`).
import type { FastifyPluginAsync } from 'fastify'
import type { AdapterModule } from '../adapter-module.js'
import { LorawanAdapter } from './lorawan-adapter.js'
import { importTool } from './chirpstack-import.js'
import type { LorawanConfig } from './schema.js'

export const adapterModule: AdapterModule<LorawanConfig> = {
  create: (ctx, config) => {
    const adapter = new LorawanAdapter(ctx, config)
    const routes: FastifyPluginAsync = async (app) => {
      // Every LoRaWAN child: last uplink, radio quality, frame counter, battery, ChirpStack log
      // counts and how many downlinks are still followed.
      app.get('/devices', async () => adapter.diagnostics())
      // One child, with the downlinks ChirpStack holds for it (queued or sent, awaiting their fate).
      app.get<{ Params: { productId: string; deviceId: string } }>('/devices/:productId/:deviceId', async (req, reply) => {
        const found = adapter.diagnosticsOf({ productId: req.params.productId, deviceId: req.params.deviceId })
        if (!found) return reply.code(404).send({ error: 'not_found', message: `${req.params.productId}/${req.params.deviceId} is not a LoRaWAN child heard from or listed in this run` })
        return { connected: adapter.isConnected, device: found }
      })
    }
    return { adapter, routes }
  },
  tools: { import: importTool },
}
