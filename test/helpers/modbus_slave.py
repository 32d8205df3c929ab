"""A real Modbus RTU slave for the serial tests: Debian's pymodbus 3.0 serial server on a pty.

Run with Debian's /usr/bin/python3 (the python3 first on PATH lacks Debian's modules):
    /usr/bin/python3 modbus_slave.py SPEC.json
SPEC: {"port": "/tmp/x", "baudrate": 9600, "units": {"1": {"hr": {"0": 17}, "ir": {...}, "co": {...}, "di": {...}}}}
Each table holds 100 entries from address 0 (zero_mode: address 0 on the wire is entry 0, as on a
real meter); reads past them get exception 2 (illegal data address). Every write is printed as one
JSON line on stdout: {"write": "hr", "unit": 1, "address": 3, "values": [...]}; "ready" once served.
"""
import asyncio
import json
import sys

from pymodbus.datastore import ModbusSequentialDataBlock, ModbusServerContext, ModbusSlaveContext
from pymodbus.server import StartAsyncSerialServer
from pymodbus.transaction import ModbusRtuFramer

SIZE = 100


class LoggedBlock(ModbusSequentialDataBlock):
    def __init__(self, unit, table, values):
        super().__init__(0, values)
        self.unit = unit
        self.table = table

    def setValues(self, address, values):  # noqa: N802 (pymodbus' name)
        super().setValues(address, values)
        vals = values if isinstance(values, list) else [values]
        print(json.dumps({"write": self.table, "unit": self.unit, "address": address, "values": [int(v) for v in vals]}), flush=True)


def block(unit, table, init):
    values = [0] * SIZE
    for addr, v in (init or {}).items():
        values[int(addr)] = int(v)
    return LoggedBlock(unit, table, values)


async def main():
    spec = json.load(open(sys.argv[1]))
    slaves = {}
    for unit, tables in spec["units"].items():
        u = int(unit)
        slaves[u] = ModbusSlaveContext(
            hr=block(u, "hr", tables.get("hr")),
            ir=block(u, "ir", tables.get("ir")),
            co=block(u, "co", tables.get("co")),
            di=block(u, "di", tables.get("di")),
            zero_mode=True,
        )
    context = ModbusServerContext(slaves=slaves, single=False)
    server = await StartAsyncSerialServer(
        context=context,
        framer=ModbusRtuFramer,
        port=spec["port"],
        baudrate=spec.get("baudrate", 9600),
        timeout=0.005,
        defer_start=True,
    )
    await server.start()
    print("ready", flush=True)
    await asyncio.Event().wait()


asyncio.run(main())
