"""Socket and association settings for pynetdicom associations."""

from __future__ import annotations

import socket

from pynetdicom.events import Event


def no_delay(event: Event) -> None:
    """EVT_CONN_OPEN handler: send each DIMSE message at once. With Nagle's algorithm every
    C-STORE response (or sub-operation) waits about 40 ms for the peer's delayed ACK."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
