// Transitional: the old entry point, kept so core/gateway.ts and cli.ts compile unchanged. It
// builds WebDeps from the old Gateway and runs the new WebServer. Delete it once the composition
// root builds WebDeps itself; cli.ts then imports the token helpers from server.ts.
import type { Gateway } from '../core/gateway.js'
import type { WebDeps } from './deps.js'
import { loadOrCreateApiToken, WebServer } from './server.js'

export { readApiToken, RUNTIME_FILE, type RuntimeInfo } from './server.js'

export class HttpApi {
  private server?: WebServer

  constructor(private readonly gw: Gateway) {}

  get port(): number {
    return this.server?.port ?? 0
  }

  async start(): Promise<void> {
    const { cfg } = this.gw
    this.server = new WebServer(this.webDeps(), { host: cfg.http.host, port: cfg.http.port, dataDir: cfg.gateway.dataDir })
    await this.server.start()
  }

  async stop(): Promise<void> {
    await this.server?.stop()
  }

  private webDeps(): WebDeps {
    const gw = this.gw
    return {
      log: gw.log,
      apiToken: loadOrCreateApiToken(gw.cfg.gateway.dataDir, gw.cfg.http.apiToken),
      health: () => {
        const nb = gw.bridge.status()
        const s = gw.outbox.stats()
        return {
          ...gw.health(),
          northbound: { configured: nb.configured, connected: nb.connected, since: nb.since, links: nb.links, linksConnected: nb.linksConnected },
          outbox: { messages: s.messages, bytes: s.bytes, oldestAgeMs: s.oldestAgeMs, maxBytes: s.maxBytes },
          clock: { offsetMs: gw.clock.offsetMs, measuredAt: gw.clock.lastSample?.measuredAt ?? null },
          // The old Gateway keeps its adapters to itself; the new composition root reports them.
          adapters: [],
        }
      },
      metrics: async () => {
        gw.updateGauges()
        return { contentType: gw.metrics.registry.contentType, body: await gw.metrics.registry.metrics() }
      },
      outboxStats: () => gw.outbox.stats(),
      devices: {
        list: () => gw.registry.list(),
        get: (ref) => gw.registry.get(ref),
        add: (d) => gw.registry.add(d),
        setEnabled: (ref, enabled) => void gw.registry.setEnabled(ref, enabled),
        setSecret: async (ref, secret) => void (await gw.registry.setSecret(ref, secret)),
        remove: (ref) => gw.registry.remove(ref),
        connections: (ref) => gw.connections.list().filter((c) => c.productId === ref.productId && c.deviceId === ref.deviceId),
        online: (ref) => gw.broker.owns(ref),
        shadow: (ref) => gw.shadows.get(ref),
      },
      commands: {
        history: (ref, limit) => gw.router.history(ref, limit),
        send: (cmd) => gw.router.accept(cmd, 'local'),
        waitForReply: (ref, requestId, timeoutMs) => gw.router.waitForReply(ref, requestId, timeoutMs),
      },
      adapterRoutes: [],
    }
  }
}
