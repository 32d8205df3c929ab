// The broker adapter's entry point for the adapter registry (loaded when the gateway starts it).
import type { AdapterModule } from '../adapter-module.js'
import { BrokerAdapter } from './broker-adapter.js'
import type { BrokerConfig } from './schema.js'

export const adapterModule: AdapterModule<BrokerConfig> = {
  create: (ctx, config) => {
    const adapter = new BrokerAdapter(ctx, config)
    return { adapter, localPublish: (topic, payload, retain) => adapter.publishLocal(topic, payload, retain), health: () => adapter.health() }
  },
}
