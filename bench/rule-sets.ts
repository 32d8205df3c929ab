// The rule sets of the rules benchmarks (bench/run.ts BENCH_ONLY=rules, bench/rules-engine.ts), for
// the load's messages: upload_data/bench/{DeviceId}/bench with a 64-byte payload that is not JSON.
const PRODUCT = 'bench'

/**
 * Ten rules as a site would have them (issue 12, "cost"): each selects its own products or data
 * types by `from`; two of them match the load's messages (an alarm whose `set` is evaluated on every
 * message, and a rate limit that lets everything through), so every message still reaches the hub.
 */
export const SITE_RULES = [
  { name: 'no-debug', from: 'upload_data/+/+/debug', actions: [{ drop: true }] },
  { name: 'boiler-celsius', from: 'upload_data/boiler/+/temp_f', where: 'has(payload.f)', actions: [{ transform: { payload: '{"celsius": (payload.f - 32.0) * 5.0 / 9.0}', dataType: 'temperature' } }] },
  { name: 'boiler-overheat', from: 'upload_data/boiler/+/temperature', actions: [{ alarm: { name: 'overheat', set: 'payload.celsius > 90.0', clear: 'payload.celsius < 85.0' } }] },
  { name: 'tank-level', from: 'upload_data/tank/+/level', actions: [{ reportOnChange: { fields: ['level'], deadband: 2, heartbeatSeconds: 300 } }] },
  { name: 'power-1m', from: 'upload_data/meter/+/power', actions: [{ window: { seconds: 60, fields: ['watts'] } }] },
  { name: 'valve', from: 'upload_data/boiler/+/temperature', where: 'payload.celsius > 95.0', actions: [{ command: { productId: 'valves', deviceId: 'v1', name: 'close' } }] },
  { name: 'dashboard', from: 'upload_data/+/+/temperature', actions: [{ republish: { topic: 'site/{productId}/{deviceId}/{dataType}' } }] },
  { name: 'vibration', from: 'upload_data/+/+/vibration', actions: [{ rateLimit: { perSeconds: 60, burst: 1 } }] },
  { name: 'oversize-alarm', from: `upload_data/${PRODUCT}/+/+`, actions: [{ alarm: { name: 'oversize', set: 'size(raw) > 100000', clear: 'size(raw) < 10' } }] },
  { name: 'flood-guard', from: `upload_data/${PRODUCT}/+/+`, actions: [{ rateLimit: { perSeconds: 1, burst: 1000000 } }] },
]

/**
 * The worst case: ten rules that all match the load's messages and evaluate CEL on each, on data
 * type, size, device, tags, transport and time, none of which holds for the load.
 */
export const ALL_MATCH_RULES = [
  { name: 'drop-debug', from: `upload_data/${PRODUCT}/+/+`, where: 'dataType == "debug"', actions: [{ drop: true }] },
  { name: 'drop-huge', from: `upload_data/${PRODUCT}/+/+`, where: 'size(raw) > 100000', actions: [{ drop: true }] },
  { name: 'boiler-celsius', from: 'upload_data/+/+/bench', where: 'device.productId == "boiler"', actions: [{ transform: { payload: '{"celsius": payload.f}' } }] },
  { name: 'quarantine', from: 'upload_data/#', where: '"quarantine" in device.tags', actions: [{ drop: true }] },
  { name: 'coap-dashboard', from: `upload_data/${PRODUCT}/#`, where: 'meta.transport == "coap"', actions: [{ republish: { topic: 'site/{deviceId}' } }] },
  { name: 'clock-sanity', from: 'upload_data/+/+/+', where: 'ts < 1000', actions: [{ drop: true }] },
  { name: 'oversize-alarm', from: `upload_data/${PRODUCT}/+/bench`, actions: [{ alarm: { name: 'oversize', set: 'size(raw) > 100000', clear: 'size(raw) < 10' } }] },
  { name: 'flood-guard', from: `upload_data/${PRODUCT}/+/+`, actions: [{ rateLimit: { perSeconds: 1, burst: 1000000 } }] },
  { name: 'drop-experimental', from: 'upload_data/+/+/+', where: 'dataType.startsWith("x_")', actions: [{ drop: true }] },
  { name: 'status-shape', from: `upload_data/${PRODUCT}/+/+`, where: 'kind == "update_status"', actions: [{ transform: { payload: '{"status": payload}' } }] },
]
