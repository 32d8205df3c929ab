// The HTTP device ingest's entry point for the adapter registry (loaded when `httpDevices:` is configured).
import type { AdapterModule } from '../adapter-module.js'
import { HttpIngestAdapter } from './http-ingest-adapter.js'
import type { HttpDevicesConfig } from './schema.js'

export const adapterModule: AdapterModule<HttpDevicesConfig> = {
  create: (ctx, config) => {
    const adapter = new HttpIngestAdapter(ctx, config)
    return { adapter, deviceRoutes: adapter.deviceRoutes }
  },
}
