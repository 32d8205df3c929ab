#!/usr/bin/env node
// npm run demo: a simulated cloud hub (hub-sim), the gateway configured against it, and simulated
// devices, all on this machine. Prints where to look; Ctrl-C stops everything.
import { spawn } from 'node:child_process'
import { mkdtempSync, readFileSync, writeFileSync, rmSync } from 'node:fs'
import os from 'node:os'
import path from 'node:path'
import { fileURLToPath } from 'node:url'

const root = fileURLToPath(new URL('..', import.meta.url))
const bin = path.join(root, 'bin', 'iothub-edge.js')
const dir = mkdtempSync(path.join(os.tmpdir(), 'iothub-edge-demo-'))
const ports = { hubMqtt: 21884, hubHttp: 28091, gwMqtt: 21883, gwInternal: 21885, gwHttp: 28090 }
const DEVICES = 20
const API_TOKEN = 'demo-token-not-for-production'

const config = `# Written by npm run demo
gateway: { dataDir: ${JSON.stringify(path.join(dir, 'data'))}, productId: gateways, deviceId: demo-gw, secret: demo }
northbound: { url: "mqtt://127.0.0.1:${ports.hubMqtt}" }
broker:
  listeners:
    - { host: 127.0.0.1, port: ${ports.gwMqtt} }
    - { host: 127.0.0.1, port: ${ports.gwInternal}, zone: internal }
http: { host: 127.0.0.1, port: ${ports.gwHttp}, apiToken: ${API_TOKEN} }
devices:
${Array.from({ length: DEVICES }, (_, i) => `  - { productId: sim, deviceId: sim-${String(i).padStart(5, '0')}, secret: sim-secret-${i}, tags: [${i % 2 ? 'odd' : 'even'}] }`).join('\n')}
log: { level: warn, format: pretty }
`
writeFileSync(path.join(dir, 'gateway.yaml'), config)

const children = []
function run(name, args) {
  const child = spawn(process.execPath, [bin, ...args], { stdio: ['ignore', 'pipe', 'pipe'] })
  const prefix = (chunk) => chunk.toString().split('\n').filter(Boolean).map((l) => `[${name}] ${l}`).join('\n') + '\n'
  child.stdout.on('data', (c) => process.stdout.write(prefix(c)))
  child.stderr.on('data', (c) => process.stderr.write(prefix(c)))
  children.push(child)
  // One of them gone while the demo runs (a port taken, a crash): its lines above say why.
  child.on('exit', (code, signal) => {
    if (stopping) return
    console.error(`[demo] ${name} exited (${signal ?? `code ${code}`}): see its lines above; stopping the demo`)
    stopAll(1)
  })
  return child
}

async function waitHttp(url, ms = 20_000) {
  const until = Date.now() + ms
  while (Date.now() < until) {
    try {
      const r = await fetch(url)
      await r.arrayBuffer()
      return
    } catch {
      await new Promise((r) => setTimeout(r, 200))
    }
  }
  throw new Error(`${url} did not answer`)
}

let stopping = false
function stopAll(code = 0) {
  if (stopping) return
  stopping = true
  for (const c of children.reverse()) c.kill('SIGTERM')
  setTimeout(() => {
    rmSync(dir, { recursive: true, force: true })
    process.exit(code)
  }, 1500)
}
process.on('SIGINT', () => stopAll())
process.on('SIGTERM', () => stopAll())

try {
  run('hub-sim', ['hub-sim', '--mqtt-port', String(ports.hubMqtt), '--http-port', String(ports.hubHttp)])
  await waitHttp(`http://127.0.0.1:${ports.hubHttp}/stats`)
  run('gateway', ['start', '-c', path.join(dir, 'gateway.yaml')])
  await waitHttp(`http://127.0.0.1:${ports.gwHttp}/api/health`)
} catch (err) {
  console.error(`[demo] ${err.message}: see the lines above; stopping the demo`)
  stopAll(1)
  await new Promise(() => {})
}
let setupCode = '(see the gateway\'s log above)'
try {
  setupCode = readFileSync(path.join(dir, 'data', 'ui-setup-code'), 'utf8').trim()
} catch {
  // already set up, or not written: the log says
}
run('devices', ['simulate', '--url', `mqtt://127.0.0.1:${ports.gwMqtt}`, '--devices', String(DEVICES), '--rate', '2', '--duration', '86400'])

console.log(`
iothub-edge demo is running (Ctrl-C stops it):
  web UI           http://127.0.0.1:${ports.gwHttp}/  (first visit: setup code ${setupCode}, then choose a user and password)
  gateway health   curl http://127.0.0.1:${ports.gwHttp}/api/health
  gateway metrics  curl http://127.0.0.1:${ports.gwHttp}/metrics
  gateway API      curl -H 'Authorization: Bearer ${API_TOKEN}' http://127.0.0.1:${ports.gwHttp}/api/devices
  hub-sim stats    curl http://127.0.0.1:${ports.hubHttp}/stats
  hub-sim uploads  curl 'http://127.0.0.1:${ports.hubHttp}/uploads?limit=5'
  send a command   curl -X POST -H 'content-type: application/json' -d '{"name":"blink","payload":{"n":3}}' http://127.0.0.1:${ports.hubHttp}/devices/sim/sim-00000/commands
  an RPC           curl -X POST -H 'content-type: application/json' -d '{"name":"read"}' http://127.0.0.1:${ports.hubHttp}/devices/sim/sim-00001/rpc
  a tag command    curl -X POST -H 'content-type: application/json' -d '{"name":"reboot"}' http://127.0.0.1:${ports.hubHttp}/tags/sim/odd/commands
  local MQTT view  mosquitto_sub -p ${ports.gwInternal} -t 'upload_data/#' -v
`)

// Show that data arrives at the hub within seconds of start.
setTimeout(async () => {
  try {
    const s = await (await fetch(`http://127.0.0.1:${ports.hubHttp}/stats`)).json()
    console.log(`[demo] hub-sim has received ${s.uploads} uploads so far: ${JSON.stringify(s.byKind)}`)
  } catch (err) {
    console.log(`[demo] could not read hub-sim stats: ${err.message}`)
  }
}, 5000)
