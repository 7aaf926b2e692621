"""Socket and association settings for pynetdicom associations."""

from __future__ import annotations

import socket
from typing import Any

from pynetdicom.association import Association
from pynetdicom.events import Event


def no_delay(event: Event) -> None:
    """EVT_CONN_OPEN handler: send each DIMSE message at once. With Nagle's algorithm every
    C-STORE response (or sub-operation) waits about 40 ms for the peer's delayed ACK."""
    sock = event.assoc.dul.socket
    if sock is not None and sock.socket is not None:
        sock.socket.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def keep_responses(event: Event) -> None:
    """EVT_CONN_OPEN handler for associations we request: never drop a peer's response.

    pynetdicom 3.0.4 pauses an association's reactor before ``send_c_store`` waits for the
    response, but the handshake can read a stale "paused" flag: under CPU load the reactor
    then takes the C-STORE-RSP off the queue, logs "Received unexpected C-STORE service
    message" and drops it, and the sender waits out the DIMSE timeout and aborts, failing
    every remaining sub-operation of a C-MOVE. A response the reactor takes goes back on the
    queue, where the waiting sender finds it.
    """
    assoc: Association = event.assoc
    serve = assoc._serve_request

    def serve_or_requeue(msg: Any, context_id: int) -> None:
        if msg.is_valid_response:
            assoc.dimse.msg_queue.put((context_id, msg))
        else:
            serve(msg, context_id)

    assoc._serve_request = serve_or_requeue  # type: ignore[method-assign]  # replacing pynetdicom's request dispatch is the point of this module
