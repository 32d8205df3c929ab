// The serial adapter's configuration (`serial:` in the config file), composed into the one root
// schema through the adapter registry. One entry per port; a Modbus RTU port lists its slaves and
// their register maps, a line-protocol port says how to read its lines (docs/operators/serial.md).
import { Type, type Static } from '@sinclair/typebox'
import { COMMAND_NAME_PATTERN, ID_PATTERN } from '../../core/hub-topics.js'

const Id = (description: string): ReturnType<typeof Type.String> => Type.String({ pattern: ID_PATTERN, description })

const Register = Type.Object(
  {
    name: Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]{0,63}$', description: 'the value\'s name in upload_data, commands and the shadow' }),
    table: Type.Union([Type.Literal('holding'), Type.Literal('input'), Type.Literal('coil'), Type.Literal('discrete')], {
      description: 'Modbus table: holding/input registers (16 bit), coils/discrete inputs (1 bit)',
    }),
    address: Type.Integer({ minimum: 0, maximum: 65535, description: 'the 0-based address on the wire (PDU address): datasheet register 40001 is holding address 0' }),
    type: Type.Optional(
      Type.Union([Type.Literal('int16'), Type.Literal('uint16'), Type.Literal('int32'), Type.Literal('uint32'), Type.Literal('float32'), Type.Literal('bool')], {
        description: 'how the raw value is read: 32-bit types take two registers; coils and discrete inputs are bool (the default for them, uint16 for registers)',
      }),
    ),
    wordOrder: Type.Union([Type.Literal('big'), Type.Literal('little')], {
      default: 'big',
      description: '32-bit types: big = high word at the lower address (Modbus convention), little = low word first',
    }),
    scale: Type.Number({ default: 1, description: 'value = raw x scale + offset (engineering units); writes send round((value - offset) / scale)' }),
    offset: Type.Number({ default: 0, description: 'see scale' }),
    unit: Type.Optional(Type.String({ description: 'engineering unit, for people (not sent)' })),
    writable: Type.Boolean({ default: false, description: 'commands and shadow desired state may write it (holding registers and coils only)' }),
    deadband: Type.Optional(Type.Number({ minimum: 0, description: 'with reportByException: the change (engineering units) that counts for this register; default the device\'s deadband' })),
  },
  { additionalProperties: false, description: 'one value of a Modbus device' },
)

const ModbusDevice = Type.Object(
  {
    unitId: Type.Integer({ minimum: 1, maximum: 247, description: 'the slave address on the bus' }),
    productId: Id('the hub ProductId this slave appears as'),
    deviceId: Id('the hub DeviceId this slave appears as'),
    pollIntervalMs: Type.Integer({ minimum: 50, default: 5000, description: 'how often its registers are read' }),
    dataType: Type.String({ pattern: COMMAND_NAME_PATTERN, default: 'reading', description: 'the upload_data DataType of each poll' }),
    registers: Type.Array(Register, { minItems: 1, description: 'its register map; contiguous registers of one table are read in one request' }),
    commands: Type.Record(Type.String({ pattern: COMMAND_NAME_PATTERN }), Type.Object({ register: Type.String({ description: 'a writable register\'s name' }) }, { additionalProperties: false }), {
      default: {},
      description: 'hub command name -> the writable register it sets; the command payload is {"value": ...} in engineering units',
    }),
    reportByException: Type.Optional(
      Type.Object(
        {
          deadband: Type.Number({ minimum: 0, default: 0, description: 'a number counts as changed when it moved by more than this since it was last sent' }),
          heartbeatMs: Type.Integer({ minimum: 1000, default: 300000, description: 'all values are sent at least this often, changed or not' }),
        },
        { additionalProperties: false, description: 'send only values that changed (beyond the deadband), plus every value each heartbeat; without it every poll is sent whole' },
      ),
    ),
    shadow: Type.Object(
      {
        desired: Type.Array(Type.String(), { default: [], description: 'writable registers the shadow\'s desired state may set' }),
        reported: Type.Array(Type.String(), { default: [], description: 'registers whose changed values are reported to the shadow' }),
      },
      { additionalProperties: false, default: {}, description: 'which registers the device shadow covers' },
    ),
  },
  { additionalProperties: false, description: 'one Modbus slave on the bus' },
)

const LineCommand = Type.Object(
  {
    template: Type.String({
      description: 'the line written to the port: {field} is the payload\'s field of that name; {deviceId}, {requestId}, {command} and {payload} (the payload as sent) are the command\'s',
    }),
  },
  { additionalProperties: false },
)

const Port = Type.Object(
  {
    name: Type.String({ pattern: '^[a-z][a-z0-9_-]{0,31}$', description: 'the port\'s name in logs, metrics and the diagnostics routes' }),
    path: Type.String({ minLength: 1, description: 'the device node, e.g. /dev/ttyUSB0 (prefer the stable /dev/serial/by-id/... link)' }),
    baudRate: Type.Integer({ minimum: 50, default: 9600, description: 'bits per second' }),
    dataBits: Type.Union([Type.Literal(5), Type.Literal(6), Type.Literal(7), Type.Literal(8)], { default: 8, description: 'data bits per character' }),
    parity: Type.Union([Type.Literal('none'), Type.Literal('even'), Type.Literal('odd')], { default: 'none', description: 'parity bit' }),
    stopBits: Type.Union([Type.Literal(1), Type.Literal(2)], { default: 1, description: 'stop bits' }),
    protocol: Type.Union([Type.Literal('modbus-rtu'), Type.Literal('lines')], { description: 'modbus-rtu: the gateway polls slaves; lines: devices send text lines' }),
    reopenMinMs: Type.Integer({ minimum: 10, default: 1000, description: 'first wait before reopening a missing or lost port; doubles up to reopenMaxMs' }),
    reopenMaxMs: Type.Integer({ minimum: 10, default: 30000, description: 'longest wait between reopen attempts' }),
    // modbus-rtu
    timeoutMs: Type.Integer({ minimum: 10, default: 500, description: 'modbus-rtu: how long to wait for a slave\'s answer' }),
    retries: Type.Integer({ minimum: 0, maximum: 10, default: 2, description: 'modbus-rtu: further tries after a timeout or a corrupt answer' }),
    awayAfterFailedPolls: Type.Integer({ minimum: 1, default: 3, description: 'modbus-rtu: failed polls in a row after which a slave is reported disconnected' }),
    devices: Type.Array(ModbusDevice, { default: [], description: 'modbus-rtu: the slaves on this bus' }),
    // lines
    format: Type.Optional(
      Type.Union([Type.Literal('json'), Type.Literal('kv'), Type.Literal('csv'), Type.Literal('regex')], {
        description: 'lines: json (one object per line), kv (id=s1;t=21.5), csv (columns), regex (named groups)',
      }),
    ),
    delimiter: Type.String({ minLength: 1, default: '\n', description: 'lines: what ends a line (a trailing \\r is dropped)' }),
    maxLineBytes: Type.Integer({ minimum: 16, default: 1024, description: 'lines: longer lines are counted and skipped (the buffer is bounded)' }),
    productId: Type.Optional(Id('lines: the ProductId of the devices on this port')),
    deviceId: Type.Optional(Id('lines: the one device on this port (or use deviceField)')),
    deviceField: Type.Optional(Type.String({ minLength: 1, description: 'lines: the field that names the device' })),
    deviceIds: Type.Array(Type.String({ pattern: ID_PATTERN }), { default: [], description: 'lines with deviceField: the devices expected on this port (others are counted and skipped)' }),
    dataType: Type.String({ pattern: COMMAND_NAME_PATTERN, default: 'reading', description: 'lines: the upload_data DataType' }),
    dataTypeField: Type.Optional(Type.String({ minLength: 1, description: 'lines: a field naming the DataType of the line (else dataType); removed from the values' })),
    messageIdField: Type.Optional(
      Type.String({ minLength: 1, description: 'lines: a field carrying the reading\'s own MessageId, kept end to end so the hub drops a resent reading; removed from the values' }),
    ),
    ack: Type.Optional(
      Type.String({ description: 'lines: a line written back once the reading is durable, e.g. "ACK {messageId}" ({messageId}, {deviceId}, {dataType}); nothing is written when it could not be stored' }),
    ),
    columns: Type.Array(Type.String({ minLength: 1 }), { default: [], description: 'lines, csv: the column names, in order' }),
    separator: Type.Optional(Type.String({ minLength: 1, description: 'lines: csv column separator (default ","), kv pair separator (default ";")' })),
    pattern: Type.Optional(Type.String({ minLength: 1, description: 'lines, regex: a JavaScript regular expression with named groups' })),
    commands: Type.Record(Type.String({ pattern: COMMAND_NAME_PATTERN }), LineCommand, { default: {}, description: 'lines: hub command name -> the line written to the port' }),
  },
  { additionalProperties: false, description: 'one serial port (an RS-485 bus or an RS-232 line)' },
)

export const SerialSchema = Type.Object(
  { ports: Type.Array(Port, { default: [], description: 'serial ports; each is owned by this adapter alone' }) },
  { additionalProperties: false, description: 'serial sensors: Modbus RTU slaves and line-protocol devices (docs/operators/serial.md)' },
)

export type SerialConfig = Static<typeof SerialSchema>
export type PortConfig = Static<typeof Port>
export type ModbusDeviceConfig = Static<typeof ModbusDevice>
export type RegisterConfig = Static<typeof Register>

/** The type a register is read as (the schema's default depends on its table). */
export const registerType = (r: RegisterConfig): NonNullable<RegisterConfig['type']> => r.type ?? (r.table === 'coil' || r.table === 'discrete' ? 'bool' : 'uint16')

const LINE_KEYS = ['format', 'productId', 'deviceId', 'deviceField', 'pattern', 'dataTypeField', 'messageIdField', 'ack'] as const

/** Rules across keys that the schema cannot say; each problem starts with its key path. */
export function checkSerialConfig(cfg: SerialConfig): string[] {
  const problems: string[] = []
  const names = new Map<string, number>()
  const paths = new Map<string, number>()
  const devices = new Map<string, string>()
  const claim = (key: string, where: string): void => {
    const had = devices.get(key)
    if (had) problems.push(`${where}: device ${key} is already configured at ${had}`)
    else devices.set(key, where)
  }
  cfg.ports.forEach((p, i) => {
    const at = `serial.ports[${i}]`
    if (names.has(p.name)) problems.push(`${at}.name: ${p.name} is used by serial.ports[${names.get(p.name)}] too`)
    names.set(p.name, i)
    if (paths.has(p.path)) problems.push(`${at}.path: ${p.path} is claimed by serial.ports[${paths.get(p.path)}] too (a port has one owner)`)
    paths.set(p.path, i)
    if (p.reopenMaxMs < p.reopenMinMs) problems.push(`${at}.reopenMaxMs: must be at least reopenMinMs (${p.reopenMinMs})`)
    if (p.protocol === 'modbus-rtu') {
      for (const k of LINE_KEYS) if (p[k] !== undefined) problems.push(`${at}.${k}: only for protocol lines`)
      if (Object.keys(p.commands).length > 0) problems.push(`${at}.commands: a modbus-rtu port maps commands per device (devices[].commands)`)
      if (p.devices.length === 0) problems.push(`${at}.devices: a modbus-rtu port needs at least one device`)
      const units = new Map<number, number>()
      p.devices.forEach((d, j) => {
        const dat = `${at}.devices[${j}]`
        if (units.has(d.unitId)) problems.push(`${dat}.unitId: ${d.unitId} is used by devices[${units.get(d.unitId)}] too`)
        units.set(d.unitId, j)
        claim(`${d.productId}/${d.deviceId}`, dat)
        const regs = new Map<string, RegisterConfig>()
        d.registers.forEach((r, k) => {
          const rat = `${dat}.registers[${k}]`
          if (regs.has(r.name)) problems.push(`${rat}.name: ${r.name} is used twice`)
          regs.set(r.name, r)
          const bit = r.table === 'coil' || r.table === 'discrete'
          const t = registerType(r)
          if (bit !== (t === 'bool')) problems.push(`${rat}.type: ${t} does not fit table ${r.table} (coils and discrete inputs are bool, registers are not)`)
          if (r.writable && (r.table === 'input' || r.table === 'discrete')) problems.push(`${rat}.writable: ${r.table} is read-only in Modbus`)
          if (r.scale === 0) problems.push(`${rat}.scale: must not be 0`)
          const width = t === 'int32' || t === 'uint32' || t === 'float32' ? 2 : 1
          if (r.address + width - 1 > 65535) problems.push(`${rat}.address: ${r.address} + ${width} registers runs past 65535`)
        })
        for (const [cmd, c] of Object.entries(d.commands)) {
          const r = regs.get(c.register)
          if (!r) problems.push(`${dat}.commands.${cmd}.register: no register named ${c.register}`)
          else if (!r.writable) problems.push(`${dat}.commands.${cmd}.register: ${c.register} is not writable`)
        }
        d.shadow.desired.forEach((n, k) => {
          const r = regs.get(n)
          if (!r) problems.push(`${dat}.shadow.desired[${k}]: no register named ${n}`)
          else if (!r.writable) problems.push(`${dat}.shadow.desired[${k}]: ${n} is not writable`)
        })
        d.shadow.reported.forEach((n, k) => {
          if (!regs.has(n)) problems.push(`${dat}.shadow.reported[${k}]: no register named ${n}`)
        })
      })
    } else {
      if (p.devices.length > 0) problems.push(`${at}.devices: only for protocol modbus-rtu`)
      if (!p.format) problems.push(`${at}.format: required for protocol lines (json, kv, csv or regex)`)
      if (!p.productId) problems.push(`${at}.productId: required for protocol lines`)
      if ((p.deviceId === undefined) === (p.deviceField === undefined)) problems.push(`${at}: give exactly one of deviceId (one device) or deviceField (the field naming it)`)
      if (p.deviceField !== undefined && p.deviceIds.length === 0) problems.push(`${at}.deviceIds: list the devices expected on this port when deviceField is used`)
      if (p.format === 'csv' && p.columns.length === 0) problems.push(`${at}.columns: required for format csv`)
      if (p.format === 'regex') {
        if (!p.pattern) problems.push(`${at}.pattern: required for format regex`)
        else {
          try {
            if (!/\(\?<[A-Za-z_]/.test(p.pattern)) problems.push(`${at}.pattern: needs named groups, e.g. (?<t>[0-9.]+)`)
            new RegExp(p.pattern)
          } catch (err) {
            problems.push(`${at}.pattern: not a valid regular expression (${(err as Error).message})`)
          }
        }
      }
      if (p.productId) {
        if (p.deviceId) claim(`${p.productId}/${p.deviceId}`, at)
        for (const d of p.deviceIds) claim(`${p.productId}/${d}`, at)
      }
    }
  })
  return problems
}
