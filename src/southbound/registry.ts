// The adapter registry: one entry per southbound adapter, keyed by its section of the config.
// Adding an adapter means adding its folder (schema.ts, index.ts exporting `adapterModule`, the
// adapter) and one entry here. Modules load lazily: a library such as `serialport`, `coap` or the
// ChirpStack package is imported only when its adapter is configured.
import { Type, type Static, type TObject, type TOptional } from '@sinclair/typebox'
import type { Transport } from '../core/types.js'
import type { AdapterModule } from './adapter-module.js'
import { BrokerSchema, checkBrokerConfig } from './broker/schema.js'
import { SerialSchema, checkSerialConfig } from './serial/schema.js'

export interface AdapterEntry<S extends TObject = TObject> {
  /** The adapter's name in logs, metrics (`iothub_edge_{name}_...`), health and its routes. */
  name: string
  transport: Transport
  /** Its section of the config file. */
  schema: S
  /** Started with its defaults even when its key is absent (else only when configured). */
  always: boolean
  /** The gateway cannot run without it: a failed start stops the gateway (else it is isolated). */
  required: boolean
  /** Rules across keys of its section; each problem starts with its key path. */
  check?: (config: Static<S>) => string[]
  load: () => Promise<{ adapterModule: AdapterModule<Static<S>> }>
}

/** An adapter that runs only when its key is in the config. */
export function optionalAdapter<S extends TObject>(e: Omit<AdapterEntry<S>, 'always' | 'required'>): AdapterEntry<S> & { configSchema: TOptional<S> } {
  return { ...e, always: false, required: false, configSchema: Type.Optional(e.schema) as TOptional<S> }
}

function alwaysOn<S extends TObject>(e: Omit<AdapterEntry<S>, 'always'>): AdapterEntry<S> & { configSchema: S } {
  return { ...e, always: true, configSchema: e.schema }
}

export const builtInAdapters = {
  broker: alwaysOn({ name: 'broker', transport: 'mqtt', schema: BrokerSchema, required: true, check: checkBrokerConfig, load: () => import('./broker/index.js') }),
  serial: optionalAdapter({ name: 'serial', transport: 'serial', schema: SerialSchema, check: checkSerialConfig, load: () => import('./serial/index.js') }),
}

/** The config properties the adapters contribute, typed per key. */
export type AdapterConfigProperties = { [K in keyof typeof builtInAdapters]: (typeof builtInAdapters)[K]['configSchema'] }

export const adapterConfigProperties = Object.fromEntries(
  Object.entries(builtInAdapters).map(([key, e]) => [key, e.configSchema]),
) as AdapterConfigProperties

/** An adapter entry together with the config key it is registered under. */
export type KeyedAdapterEntry = AdapterEntry & { key: string; configSchema: TObject | TOptional<TObject> }

export function adapterEntries(extra: readonly KeyedAdapterEntry[] = []): KeyedAdapterEntry[] {
  const builtIn = Object.entries(builtInAdapters).map(([key, e]) => ({ ...(e as unknown as AdapterEntry), key, configSchema: e.configSchema }))
  return [...builtIn, ...extra]
}
