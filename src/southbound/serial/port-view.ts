// A port as the technician's page and `GET /ports` show it: its state and since when, what
// crossed it (bytes, frames, CRC errors, timeouts, garbage lines), the last activity, and the last
// problem with what to do about it (docs/operators/serial.md, "Diagnostics routes").
import type { SerialAdapter, PortRuntime } from './serial-adapter.js'

export interface PortProblem {
  /** What went wrong, as the port, the bus or the line parser told it. */
  message: string
  at: number
  /** What to check or do. */
  hint: string
}

const OPEN_HINTS: [RegExp, string][] = [
  [/no such file|ENOENT/i, 'the device node is missing: plug the USB-serial adapter in and check `path` (ls -l /dev/serial/by-id/); the port is opened by itself when it appears'],
  [/permission denied|EACCES|EPERM/i, 'the service user may not open it: add it to the dialout group (usermod -aG dialout iothub-edge) and restart the service'],
  [/busy|lock|EAGAIN|temporarily unavailable/i, 'another program holds the port (ModemManager, a serial console, a second gateway): stop it or give this port to one owner'],
]
const LOST_HINT = 'the port went away (USB adapter unplugged, loose cable, USB power): it is reopened by itself; check the cable and `dmesg` for USB resets'
const BUS_HINTS: Record<'timeout' | 'crc' | 'mismatch' | 'exception', string> = {
  timeout: 'no answer: check the unit id, that the device is powered, the wiring (A/B swapped?), baudRate/parity/stopBits against the device, and the 120 ohm termination',
  crc: 'corrupt answers: a baudRate or parity that does not match the device, missing termination or bias resistors, noise on a long cable, or a second master on the bus',
  mismatch: 'answers that do not fit the request: a second master or two devices with one unit id on the bus, or a device that is not Modbus RTU',
  exception: 'the device refused the request: check the register map (table and 0-based address) against its datasheet',
}
const GARBAGE_HINT = 'lines that do not parse: check baudRate (wrong speed gives garbage), the format and its options, and the delimiter'

function openHint(message: string): string {
  return OPEN_HINTS.find(([re]) => re.test(message))?.[1] ?? LOST_HINT
}

/** The most recent problem of the port, its bus or its lines; null while there was none (or only port errors a reopen ended). */
export function lastProblem(rt: PortRuntime): PortProblem | null {
  const found: PortProblem[] = []
  const { link } = rt
  // The port's own error is over once it opened again after it.
  const over = link.isOpen && link.lastErrorAt !== null && link.stateSince >= link.lastErrorAt
  if (link.lastError !== null && link.lastErrorAt !== null && !over) found.push({ message: link.lastError, at: link.lastErrorAt, hint: openHint(link.lastError) })
  const f = rt.master?.lastFailure
  if (f) found.push({ message: f.message, at: f.at, hint: BUS_HINTS[f.kind] })
  const r = rt.lines?.lastRejected
  if (r) found.push({ message: `line skipped (${r.reason}): ${r.detail}`, at: r.at, hint: r.reason === 'unknown_device' ? 'the line names a device that is not in deviceIds: add it, or check deviceField' : GARBAGE_HINT })
  return found.sort((a, b) => b.at - a.at)[0] ?? null
}

function portCounters(rt: PortRuntime): Record<string, number> {
  const { link, master, lines } = rt
  const garbage = lines ? Object.values(lines.rejected).reduce((a, b) => a + b, 0) : 0
  return {
    ...link.counters,
    framesOut: link.counters.writes,
    framesIn: master ? master.counters.answers : (lines?.lines ?? 0) + garbage,
    timeouts: master?.counters.timeouts ?? 0,
    crcErrors: master?.counters.crcErrors ?? 0,
    exceptions: master?.counters.exceptions ?? 0,
    garbageLines: garbage,
    monitorDropped: link.monitor.dropped,
  }
}

export function portView(rt: PortRuntime): Record<string, unknown> {
  const { cfg, link } = rt
  const problem = lastProblem(rt)
  return {
    name: cfg.name,
    path: cfg.path,
    protocol: cfg.protocol,
    baudRate: cfg.baudRate,
    // The framing as a datasheet writes it: 9600 8N1.
    framing: `${cfg.dataBits}${cfg.parity[0]!.toUpperCase()}${cfg.stopBits}`,
    state: link.state,
    stateSince: link.stateSince,
    open: link.isOpen,
    lastActivityAt: link.lastActivityAt,
    lastError: link.lastError,
    problem,
    counters: portCounters(rt),
    devices:
      cfg.protocol === 'modbus-rtu'
        ? rt.modbus.map((d) => ({
            productId: d.ref.productId,
            deviceId: d.ref.deviceId,
            unitId: d.cfg.unitId,
            reachable: d.reachable,
            lastPollAt: d.lastPollAt,
            lastError: d.lastError,
            lastValues: d.lastValues,
            counters: { ...d.counters },
          }))
        : [...rt.lines!.devices.values()].map((d) => ({ productId: d.productId, deviceId: d.deviceId, reachable: link.isOpen })),
    ...(rt.lines ? { lines: { accepted: rt.lines.lines, rejected: { ...rt.lines.rejected }, lastRejected: rt.lines.lastRejected } } : {}),
  }
}

export function portsView(adapter: SerialAdapter): { ports: Record<string, unknown>[] } {
  return { ports: adapter.ports.map(portView) }
}
