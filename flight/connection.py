"""Connection strings, parsed in one pure function (pymavlink's forms, nothing ambiguous).

    udpin:0.0.0.0:14550      listen for a vehicle (or MAVProxy --out) sending to this port
    udpout:192.168.4.1:14550 send to a vehicle listening there
    tcp:127.0.0.1:5760       connect to a TCP server (ArduPilot SITL, a telemetry bridge)
    tcpin:0.0.0.0:5760       accept one TCP client
    /dev/ttyUSB0,57600       a serial port and its baud rate (COM3,57600 on Windows)
"""
from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

EXAMPLES = ("udpin:0.0.0.0:14550", "udpout:192.168.4.1:14550", "tcp:127.0.0.1:5760", "tcpin:0.0.0.0:5760",
            "/dev/ttyUSB0,57600")
NETWORK_KINDS = ("udpin", "udpout", "tcp", "tcpin")
BAUD_RATES = (9600, 19200, 38400, 57600, 115200, 230400, 460800, 500000, 921600, 1000000, 1500000, 2000000)


class ConnectionStringError(ValueError):
    """A connection string that does not say unambiguously where the vehicle is."""


@dataclass(frozen=True)
class Connection:
    kind: str                  # udpin, udpout, tcp, tcpin or serial
    host: str = ""
    port: int = 0
    device: str = ""
    baud: int = 0

    @property
    def url(self) -> str:
        """What pymavlink.mavutil.mavlink_connection takes (with baud= for serial)."""
        return self.device if self.kind == "serial" else f"{self.kind}:{self.host}:{self.port}"

    def __str__(self) -> str:
        return f"{self.device},{self.baud}" if self.kind == "serial" else self.url


def _fail(text: str, why: str):
    raise ConnectionStringError(f"connection string {text!r}: {why}. Valid forms: {', '.join(EXAMPLES)}")


def _host(text: str, host: str) -> str:
    if host == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(host)
        return host
    except ValueError:
        if re.fullmatch(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?", host) and not re.fullmatch(r"[0-9.]+", host):
            return host      # a host name
        _fail(text, f"{host!r} is not an IP address or a host name")


def parse_connection(text: str) -> Connection:
    text = (text or "").strip()
    if not text:
        _fail(text, "it is empty")
    if re.fullmatch(r"\d+", text):
        _fail(text, "a bare port is ambiguous (UDP or TCP? listen or connect?)")
    m = re.fullmatch(r"([a-z]+):(.*)", text)
    if m and not text.startswith(("COM", "/")):
        kind, rest = m.groups()
        if kind == "udp":
            kind = "udpin"     # pymavlink's meaning of udp:
        if kind not in NETWORK_KINDS:
            _fail(text, f"unknown link type {kind!r} (use one of {', '.join(NETWORK_KINDS)}, or a serial device)")
        host, sep, port = rest.rpartition(":")
        if not sep or not host:
            _fail(text, "it needs both a host and a port")
        if not port.isdigit() or not 1 <= int(port) <= 65535:
            _fail(text, f"port {port!r} is not a number from 1 to 65535")
        return Connection(kind, host=_host(text, host), port=int(port))
    if text.startswith("/") or re.fullmatch(r"COM\d+(,.*)?", text):
        device, sep, baud = text.partition(",")
        if not sep:
            _fail(text, "a serial port needs its baud rate after a comma")
        if not baud.isdigit() or int(baud) not in BAUD_RATES:
            _fail(text, f"baud rate {baud!r} is not one of {', '.join(map(str, BAUD_RATES))}")
        return Connection("serial", device=device, baud=int(baud))
    if re.fullmatch(r"[^:/]+:\d+", text):
        _fail(text, "host:port alone is ambiguous: say udpin:, udpout:, tcp: or tcpin:")
    _fail(text, "not a network address or a serial device")
