// Prometheus metrics (GET /metrics). Components count; the registry only collects.
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client'
import type { AdapterMetrics } from './adapter-context.js'

export class Metrics {
  readonly registry = new Registry()
  readonly uplinks = new Counter({
    name: 'iothub_edge_uplinks_total',
    help: 'Messages accepted for the hub, by transport and kind',
    labelNames: ['transport', 'kind'] as const,
    registers: [this.registry],
    // What countUplink() added up since the last read goes in now, before the values are read.
    collect: () => this.collectUplinks(),
  })
  // Uplinks counted per message by countUplink(), not yet handed to the counter: by transport, then kind.
  private readonly uplinkCells = new Map<string, Map<string, { labels: { transport: string; kind: string }; n: number }>>()
  readonly rejected = new Counter({
    name: 'iothub_edge_rejected_total',
    help: 'Input refused, by reason (bad_topic, acl_denied, auth_failed, malformed_packet, unsupported_protocol, store_full)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  })
  readonly outboxMessages = new Gauge({ name: 'iothub_edge_outbox_messages', help: 'Messages waiting for the hub', registers: [this.registry] })
  readonly outboxBytes = new Gauge({ name: 'iothub_edge_outbox_bytes', help: 'Bytes waiting for the hub (quota units)', registers: [this.registry] })
  readonly outboxQuota = new Gauge({ name: 'iothub_edge_outbox_quota_bytes', help: 'Outbox quota', registers: [this.registry] })
  readonly outboxOldest = new Gauge({
    name: 'iothub_edge_outbox_oldest_age_seconds',
    help: 'Age of the oldest message waiting',
    registers: [this.registry],
  })
  readonly dropped = new Gauge({
    name: 'iothub_edge_outbox_dropped_total',
    help: 'Acknowledged messages dropped from the outbox, by reason (quota, rpc_resp_expired); kept across restarts',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  })
  readonly northboundConnected = new Gauge({ name: 'iothub_edge_northbound_connected', help: '1 when the hub link is up', registers: [this.registry] })
  readonly northboundPublished = new Counter({
    name: 'iothub_edge_northbound_published_total',
    help: 'Messages acknowledged by the hub',
    registers: [this.registry],
  })
  readonly northboundReconnects = new Counter({
    name: 'iothub_edge_northbound_reconnects_total',
    help: 'Hub connection attempts after a loss',
    registers: [this.registry],
  })
  readonly downlinks = new Counter({
    name: 'iothub_edge_downlinks_total',
    help: 'Messages from the hub, by outcome (delivered, offline, expired, duplicate, malformed, unknown_device)',
    labelNames: ['outcome'] as const,
    registers: [this.registry],
  })
  readonly clockOffset = new Gauge({
    name: 'iothub_edge_clock_offset_ms',
    help: "The hub's clock minus ours, measured with $ntp (0 until the hub was reached)",
    registers: [this.registry],
  })
  readonly storeFull = new Gauge({ name: 'iothub_edge_store_disk_full', help: '1 while the data disk is full and intake is stopped', registers: [this.registry] })
  readonly uiLoginFailures = new Counter({
    name: 'iothub_edge_ui_login_failures_total',
    help: 'Web UI logins and setup attempts refused, by reason (bad_credentials, bad_setup_code, rate_limited)',
    labelNames: ['reason'] as const,
    registers: [this.registry],
  })

  constructor() {
    collectDefaultMetrics({ register: this.registry, prefix: 'iothub_edge_' })
  }

  /**
   * One more message accepted for the hub: `iothub_edge_uplinks_total{transport, kind}`. A plain
   * addition per message; the counter gets the sums when it is read (a scrape), since prom-client's
   * `inc` with labels builds and checks a key for its labels on every call, also through `labels()`.
   */
  countUplink(transport: string, kind: string): void {
    let byKind = this.uplinkCells.get(transport)
    if (!byKind) this.uplinkCells.set(transport, (byKind = new Map()))
    const cell = byKind.get(kind)
    if (cell) cell.n++
    else byKind.set(kind, { labels: { transport, kind }, n: 1 })
  }

  private collectUplinks(): void {
    for (const byKind of this.uplinkCells.values()) {
      for (const cell of byKind.values()) {
        if (cell.n === 0) continue
        this.uplinks.inc(cell.labels, cell.n)
        cell.n = 0
      }
    }
  }

  /** An adapter's own metrics, in the same registry, named `iothub_edge_{adapter}_{name}`. */
  forAdapter(adapter: string): AdapterMetrics {
    const prefix = `iothub_edge_${adapter.replace(/[^A-Za-z0-9_]/g, '_')}_`
    return {
      counter: <L extends string>(name: string, help: string, labelNames: readonly L[] = []) =>
        new Counter<L>({ name: prefix + name, help, labelNames, registers: [this.registry] }),
      gauge: <L extends string>(name: string, help: string, labelNames: readonly L[] = []) =>
        new Gauge<L>({ name: prefix + name, help, labelNames, registers: [this.registry] }),
      rejected: (reason: string) => this.rejected.inc({ reason }),
    }
  }
}
