// The serial adapter (kind mapped): RS-485/RS-232 ports, each either a Modbus RTU bus the gateway
// polls or a line of text-protocol sensors. Every configured device is owned from the start,
// reachable or not. A port that is missing or goes away never fails the adapter: it is reopened
// with backoff and shows in the routes, the metrics and the log (docs/operators/serial.md).
import { realpathSync } from 'node:fs'
import type { AdapterContext } from '../../core/adapter-context.js'
import type { Command, DeliveryResult, DeviceRef, SouthboundAdapter } from '../../core/types.js'
import { deviceKey } from '../../core/types.js'
import { LinePort } from './line-port.js'
import { ModbusDevice } from './modbus-device.js'
import { ModbusMaster } from './modbus-master.js'
import { PortLink } from './port-link.js'
import type { PortConfig, SerialConfig } from './schema.js'
import { serialMetrics, type SerialMetrics } from './serial-metrics.js'

/** One configured port and what runs on it. */
export interface PortRuntime {
  cfg: PortConfig
  link: PortLink
  master?: ModbusMaster
  modbus: ModbusDevice[]
  lines?: LinePort
}

export class SerialAdapter implements SouthboundAdapter {
  readonly name = 'serial'
  readonly kind = 'mapped'
  readonly ports: PortRuntime[] = []
  private readonly byDevice = new Map<string, { port: PortRuntime; modbus?: ModbusDevice }>()
  private readonly metrics: SerialMetrics
  private started = false

  constructor(
    private readonly ctx: AdapterContext,
    private readonly config: SerialConfig,
  ) {
    this.metrics = serialMetrics(ctx.metrics)
  }

  async start(): Promise<void> {
    if (this.started) return
    this.refuseSharedDevices()
    this.started = true
    for (const cfg of this.config.ports) {
      const link = new PortLink(cfg, this.ctx.log)
      const rt: PortRuntime = { cfg, link, modbus: [] }
      this.metrics.portOpen.set({ port: cfg.name }, 0)
      link.on('open', () => this.metrics.portOpen.set({ port: cfg.name }, 1))
      link.on('close', () => {
        this.metrics.portOpen.set({ port: cfg.name }, 0)
        this.metrics.portLost.inc({ port: cfg.name })
      })
      if (cfg.protocol === 'modbus-rtu') {
        const byUnit = new Map<number, ModbusDevice>()
        rt.master = new ModbusMaster(link, {
          timeoutMs: cfg.timeoutMs,
          retries: cfg.retries,
          baudRate: cfg.baudRate,
          onAttempt: (unitId, e) => byUnit.get(unitId)?.attempt(e),
        })
        for (const d of cfg.devices) {
          const dev = new ModbusDevice(d, cfg, rt.master, this.ctx, this.metrics)
          byUnit.set(d.unitId, dev)
          rt.modbus.push(dev)
          this.byDevice.set(deviceKey(dev.ref), { port: rt, modbus: dev })
        }
        link.on('close', () => rt.modbus.forEach((d) => d.busLost()))
      } else {
        rt.lines = new LinePort(cfg, link, this.ctx, this.metrics)
        for (const d of rt.lines.devices.values()) this.byDevice.set(deviceKey(d), { port: rt })
        rt.lines.start()
      }
      this.ports.push(rt)
      this.warnUnregistered(rt)
      this.countOpenFailures(rt)
      link.start()
      for (const d of rt.modbus) d.start()
    }
  }

  async stop(): Promise<void> {
    if (!this.started) return
    this.started = false
    for (const rt of [...this.ports].reverse()) {
      rt.master?.close()
      await Promise.all(rt.modbus.map((d) => d.stop()))
      await rt.lines?.stop()
      await rt.link.stop()
      rt.link.removeAllListeners()
    }
    this.ports.length = 0
    this.byDevice.clear()
  }

  /** Every configured device, reachable or not (adapters.md, "Two kinds of device"). */
  owns(device: DeviceRef): boolean {
    return this.started && this.byDevice.has(deviceKey(device))
  }

  async deliver(command: Command): Promise<DeliveryResult> {
    const at = this.started ? this.byDevice.get(deviceKey(command.device)) : undefined
    if (!at) return 'offline'
    if (at.modbus) return at.modbus.deliver(command)
    return at.port.lines!.deliver(command)
  }

  /** A port by its configured name (for the diagnostics routes). */
  port(name: string): PortRuntime | undefined {
    return this.ports.find((p) => p.cfg.name === name)
  }

  /**
   * Two paths to one device node (`/dev/serial/by-id/...` and `/dev/ttyUSB0`) would put two masters
   * on one bus; the config check sees only the spelling, so the paths present now are resolved here.
   */
  private refuseSharedDevices(): void {
    const seen = new Map<string, number>()
    this.config.ports.forEach((p, i) => {
      let real: string
      try {
        real = realpathSync(p.path)
      } catch {
        return // missing for now: it is opened (and reopened) when it appears
      }
      const had = seen.get(real)
      if (had !== undefined) throw new Error(`serial.ports[${i}].path: ${p.path} is the same device as serial.ports[${had}].path (${real}); a port has one owner`)
      seen.set(real, i)
    })
  }

  /** A device missing from `devices:` works locally, but the hub's ACL and the tag/shadow copies do not know it. */
  private warnUnregistered(rt: PortRuntime): void {
    const refs = rt.modbus.length > 0 ? rt.modbus.map((d) => d.ref) : [...(rt.lines?.devices.values() ?? [])]
    for (const ref of refs) {
      if (!this.ctx.devices.get(ref)) {
        this.ctx.log.warn({ port: rt.cfg.name, device: deviceKey(ref) }, `serial device ${deviceKey(ref)} is not in devices:; add it there so the hub accepts its data as a child of this gateway`)
      }
    }
  }

  private countOpenFailures(rt: PortRuntime): void {
    let seen = 0
    // The link counts its own failures; mirror them into the metric as they happen.
    const sync = (): void => {
      const n = rt.link.counters.openFailures
      if (n > seen) this.metrics.portOpenFailures.inc({ port: rt.cfg.name }, n - seen)
      seen = n
    }
    rt.link.on('open', sync)
    rt.link.on('failed', sync)
  }
}
