// The CoAP endpoint's entry point for the adapter registry (loaded when `coap:` is configured).
import type { AdapterModule } from '../adapter-module.js'
import { CoapAdapter } from './coap-adapter.js'
import type { CoapConfig } from './schema.js'

export const adapterModule: AdapterModule<CoapConfig> = {
  create: (ctx, config) => ({ adapter: new CoapAdapter(ctx, config) }),
}
