// The serial adapter's entry point for the adapter registry (loaded only when `serial:` is configured,
// so `serialport` and its native binding load only then).
import type { AdapterModule } from '../adapter-module.js'
import { serialRoutes } from './routes.js'
import { SerialAdapter } from './serial-adapter.js'
import type { SerialConfig } from './schema.js'

export const adapterModule: AdapterModule<SerialConfig> = {
  create: (ctx, config) => {
    const adapter = new SerialAdapter(ctx, config)
    return { adapter, routes: serialRoutes(adapter) }
  },
}
