// The serial adapter's own metrics (`iothub_edge_serial_*` on /metrics); docs/operators/serial.md
// says what each counter means.
import type { Counter, Gauge } from 'prom-client'
import type { AdapterMetrics } from '../../core/adapter-context.js'

type DeviceLabels = 'port' | 'device'

export interface SerialMetrics {
  portOpen: Gauge<'port'>
  portOpenFailures: Counter<'port'>
  portLost: Counter<'port'>
  polls: Counter<DeviceLabels>
  failedPolls: Counter<DeviceLabels>
  timeouts: Counter<DeviceLabels>
  crcErrors: Counter<DeviceLabels>
  exceptions: Counter<DeviceLabels>
  writes: Counter<DeviceLabels | 'result'>
  readingsRefused: Counter<DeviceLabels>
  unchangedPolls: Counter<DeviceLabels>
  commandsIgnored: Counter<DeviceLabels | 'command'>
  shadowKeysIgnored: Counter<DeviceLabels>
  lines: Counter<'port'>
  linesRejected: Counter<'port' | 'reason'>
}

export function serialMetrics(m: AdapterMetrics): SerialMetrics {
  const dev = ['port', 'device'] as const
  return {
    portOpen: m.gauge('port_open', '1 while the serial port is open, 0 while it is missing or being reopened', ['port']),
    portOpenFailures: m.counter('port_open_failures_total', 'attempts to open a serial port that failed (missing device node, permissions, busy)', ['port']),
    portLost: m.counter('port_lost_total', 'times an open serial port went away (USB adapter unplugged, read error)', ['port']),
    polls: m.counter('modbus_polls_total', 'polls of a Modbus device (each reads its whole register map)', dev),
    failedPolls: m.counter('modbus_failed_polls_total', 'polls that got no valid answer after every retry', dev),
    timeouts: m.counter('modbus_timeouts_total', 'requests (each try) the slave did not answer within timeoutMs', dev),
    crcErrors: m.counter('modbus_crc_errors_total', 'answers dropped as corrupt: bad CRC, or not fitting the request', dev),
    exceptions: m.counter('modbus_exceptions_total', 'Modbus exception answers (illegal address, device busy, ...)', dev),
    writes: m.counter('modbus_writes_total', 'register/coil writes from commands and shadow desired state, by result', [...dev, 'result']),
    readingsRefused: m.counter('readings_refused_total', 'readings not stored because the gateway refused them (disk full, stopping)', dev),
    unchangedPolls: m.counter('modbus_unchanged_polls_total', 'polls with reportByException that sent nothing (no value moved beyond its deadband)', dev),
    commandsIgnored: m.counter('commands_ignored_total', 'protocol-internal commands and m2m messages a serial device cannot take', [...dev, 'command']),
    shadowKeysIgnored: m.counter('shadow_keys_ignored_total', 'shadow desired keys that name no register in shadow.desired', dev),
    lines: m.counter('lines_total', 'lines read from a line-protocol port and uploaded', ['port']),
    linesRejected: m.counter('lines_rejected_total', 'lines skipped: garbage, too_long, not_utf8, unknown_device, no_values, partial', ['port', 'reason']),
  }
}
