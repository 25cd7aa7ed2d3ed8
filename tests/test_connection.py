import pytest

from flight.connection import ConnectionStringError, parse_connection


@pytest.mark.parametrize("text,url,kind", [
    ("udpin:0.0.0.0:14550", "udpin:0.0.0.0:14550", "udpin"),
    ("udp:127.0.0.1:14550", "udpin:127.0.0.1:14550", "udpin"),
    ("udpout:192.168.4.1:14555", "udpout:192.168.4.1:14555", "udpout"),
    ("tcp:localhost:5760", "tcp:127.0.0.1:5760", "tcp"),
    ("tcpin:0.0.0.0:5760", "tcpin:0.0.0.0:5760", "tcpin"),
    ("tcp:drone.local:5760", "tcp:drone.local:5760", "tcp"),
])
def test_network_connections(text, url, kind):
    c = parse_connection(text)
    assert c.url == url and c.kind == kind


def test_serial_connections():
    c = parse_connection("/dev/ttyUSB0,57600")
    assert (c.kind, c.device, c.baud, c.url) == ("serial", "/dev/ttyUSB0", 57600, "/dev/ttyUSB0")
    assert parse_connection("COM3,115200").device == "COM3"


@pytest.mark.parametrize("text,why", [
    ("", "empty"), ("14550", "bare port"), ("127.0.0.1:14550", "ambiguous"), ("udpin:14550", "host and a port"),
    ("udpin:0.0.0.0:99999", "port"), ("serial:/dev/ttyUSB0", "unknown link type"), ("/dev/ttyUSB0", "baud"),
    ("/dev/ttyUSB0,57000", "baud rate"), ("tcp:999.1.1.1:5760", "not an IP address"),
])
def test_ambiguous_or_malformed_strings_are_refused_with_examples(text, why):
    with pytest.raises(ConnectionStringError) as err:
        parse_connection(text)
    assert why in str(err.value) and "udpin:0.0.0.0:14550" in str(err.value)
