"""Choosing an Orthanc of a cluster: skip the ones that are down, keep the one that answered,
never ask another one again after a refusal."""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any, ClassVar, cast

import pytest
from orthanc_api_client.exceptions import ConnectionError as OrthancConnectionError
from orthanc_api_client.exceptions import HttpError
from orthanc_api_client.exceptions import TimeoutError as OrthancTimeout
from pydantic import ValidationError

from gateway.config import Config, Orthanc
from gateway.forwarder import Forwarder, Refused, Unreachable
from gateway.orthanc_cluster import OrthancCluster, failover_reason
from gateway.pacs_reader import PacsReader
from gateway.preflight import orthanc_warning
from testkit.localstack import free_port

URLS = ["http://orthanc-a:8042", "http://orthanc-b:8042", "http://orthanc-c:8042"]


class FakeClient:
    """Answers ``get`` with what its script says next: an exception to raise or a value."""

    def __init__(self, url: str, script: dict[str, list[Any]]) -> None:
        self.url = url
        self.script = script
        self.calls: list[str] = []

    def get(self, path: str, **_: Any) -> Any:
        self.calls.append(path)
        outcome = self.script[self.url].pop(0) if self.script[self.url] else f"ok from {self.url}"
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


def cluster(script: dict[str, list[Any]]) -> tuple[OrthancCluster, dict[str, FakeClient]]:
    clients: dict[str, FakeClient] = {}

    def client_for(settings: Orthanc) -> Any:
        clients[settings.url] = FakeClient(settings.url, script)
        return clients[settings.url]

    settings = Orthanc(url=URLS[0], failover=URLS[1:], username="gw", password="pw")
    return OrthancCluster(settings, client_for), clients


def test_a_server_that_is_down_is_skipped_and_the_one_that_answered_is_kept() -> None:
    orthanc, clients = cluster({URLS[0]: [OrthancConnectionError()], URLS[1]: [], URLS[2]: []})
    assert orthanc.request("get", "system") == f"ok from {URLS[1]}"
    assert orthanc.url == URLS[1]
    assert orthanc.request("get", "system") == f"ok from {URLS[1]}"
    assert clients[URLS[0]].calls == ["system"]  # not asked again once B answered
    assert clients[URLS[1]].calls == ["system", "system"]
    assert clients[URLS[2]].calls == []


@pytest.mark.parametrize("failure", [OrthancTimeout(), HttpError(http_status_code=500), HttpError(http_status_code=503),
                                     HttpError(http_status_code=429), None])
def test_timeouts_server_errors_overload_and_cut_off_answers_fail_over(failure: Any) -> None:
    orthanc, _ = cluster({URLS[0]: [failure], URLS[1]: [], URLS[2]: []})
    assert orthanc.request("get", "instances") == f"ok from {URLS[1]}"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409])
def test_a_refusal_goes_back_at_once_and_no_other_server_is_asked(status: int) -> None:
    orthanc, clients = cluster({URLS[0]: [HttpError(http_status_code=status)], URLS[1]: [], URLS[2]: []})
    with pytest.raises(HttpError) as raised:
        orthanc.request("get", "instances")
    assert raised.value.http_status_code == status
    assert clients[URLS[1]].calls == [] and orthanc.url == URLS[0]


def test_when_every_server_is_down_the_last_failure_is_raised_and_the_choice_stays() -> None:
    orthanc, _ = cluster({URLS[0]: [OrthancConnectionError()], URLS[1]: [HttpError(http_status_code=502)],
                          URLS[2]: [OrthancTimeout()]})
    with pytest.raises(OrthancTimeout):
        orthanc.request("get", "system")
    assert orthanc.url == URLS[0]
    assert orthanc.request("get", "system") == f"ok from {URLS[0]}"  # A is back: tried first again


def test_the_search_goes_round_from_the_server_in_use() -> None:
    orthanc, clients = cluster({URLS[0]: [OrthancConnectionError()], URLS[1]: [], URLS[2]: []})
    orthanc.request("get", "system")  # B in use
    clients[URLS[1]].script[URLS[1]] += [OrthancConnectionError()]
    clients[URLS[2]].script[URLS[2]] += [OrthancConnectionError()]
    assert orthanc.request("get", "system") == f"ok from {URLS[0]}"  # B, then C, then round to A
    assert [len(clients[u].calls) for u in URLS] == [2, 2, 1]


def test_every_server_cut_off_gives_the_caller_the_cut_off_answer() -> None:
    orthanc, _ = cluster({URLS[0]: [None], URLS[1]: [None], URLS[2]: [None]})
    assert orthanc.request("get", "system") is None


def test_local_problems_are_no_failover_reason() -> None:
    assert failover_reason(OSError("CA bundle unreadable")) is None
    assert failover_reason(ValueError()) is None
    assert failover_reason(HttpError(http_status_code=None)) is None


def test_the_log_names_the_servers_skipped_and_taken(caplog: pytest.LogCaptureFixture) -> None:
    orthanc, _ = cluster({URLS[0]: [HttpError(http_status_code=500)], URLS[1]: [], URLS[2]: []})
    with caplog.at_level(logging.INFO, logger="gateway.orthanc"):
        orthanc.request("get", "instances/secret-id/file")
    text = caplog.text
    assert f"Orthanc {URLS[0]} skipped (HTTP 500); trying {URLS[1]}" in text
    assert f"Orthanc {URLS[1]} in use" in text
    assert "secret-id" not in text  # the request's path is not logged


def test_one_url_behaves_as_before() -> None:
    clients: list[FakeClient] = []
    script: dict[str, list[Any]] = {URLS[0]: [OrthancConnectionError()]}

    def client_for(settings: Orthanc) -> Any:
        clients.append(FakeClient(settings.url, script))
        return clients[-1]

    orthanc = OrthancCluster(Orthanc(url=URLS[0], username="gw", password="pw"), client_for)
    with pytest.raises(OrthancConnectionError):
        orthanc.request("get", "system")
    assert len(clients) == 1


@pytest.mark.parametrize("failover, problem", [
    (["https://orthanc-b:8042"], "failover.0 'https://orthanc-b:8042': give a http:// URL like url's"),
    (["orthanc-b:8042"], "failover.0"),
    (["http://orthanc-a:8042/"], "each Orthanc URL once"),
])
def test_the_failover_list_is_checked(failover: list[str], problem: str) -> None:
    with pytest.raises(ValidationError, match=problem):
        Orthanc(url=URLS[0], failover=failover, username="gw", password="pw")


# -- over the wire: the Orthanc team's client against small HTTP servers ---------------------


class _Answer(BaseHTTPRequestHandler):
    status = 200
    body: ClassVar[dict[str, Any]] = {}

    def _reply(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        payload = json.dumps(self.body).encode()
        self.send_response(self.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = _reply

    def log_message(self, *_: Any) -> None:
        pass


def _server(status: int, body: dict[str, Any]) -> ThreadingHTTPServer:
    handler = type("Handler", (_Answer,), {"status": status, "body": body})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def servers() -> Iterator[dict[str, ThreadingHTTPServer]]:
    made = {"error": _server(500, {"Message": "Internal error"}),
            "refusing": _server(400, {"Message": "Bad file format"}),
            "good": _server(200, {"ID": "abc-123", "Status": "Success"})}
    yield made
    for server in made.values():
        server.shutdown()
        server.server_close()


def _url(server: ThreadingHTTPServer) -> str:
    return f"http://127.0.0.1:{server.server_address[1]}"


def test_the_forwarder_stores_on_the_first_server_that_answers(servers: dict[str, ThreadingHTTPServer]) -> None:
    closed = f"http://127.0.0.1:{free_port()}"  # nothing listens there: connection refused
    settings = Orthanc(url=closed, failover=[_url(servers["error"]), _url(servers["good"])], username="gw",
                       password="pw", timeout_seconds=5)
    assert Forwarder(settings).send(b"DICM") == "abc-123"


def test_a_refusal_by_the_server_in_use_is_final(servers: dict[str, ThreadingHTTPServer]) -> None:
    settings = Orthanc(url=_url(servers["refusing"]), failover=[_url(servers["good"])], username="gw", password="pw")
    with pytest.raises(Refused, match="HTTP 400"):
        Forwarder(settings).send(b"DICM")


def test_with_every_server_down_the_forwarder_backs_off() -> None:
    settings = Orthanc(url=f"http://127.0.0.1:{free_port()}", failover=[f"http://127.0.0.1:{free_port()}"],
                       username="gw", password="pw", timeout_seconds=2)
    with pytest.raises(Unreachable, match="not reachable"):
        Forwarder(settings).send(b"DICM")


def test_the_reader_reads_from_the_server_that_answers(servers: dict[str, ThreadingHTTPServer]) -> None:
    settings = Orthanc(url=_url(servers["error"]), failover=[_url(servers["good"])], username="gw", password="pw")
    assert PacsReader(settings).file("abc-123") == json.dumps({"ID": "abc-123", "Status": "Success"}).encode()


def test_a_server_that_accepts_but_never_answers_is_left_after_the_timeout(
        servers: dict[str, ThreadingHTTPServer]) -> None:
    with socket.socket() as hung:  # listens, never accepts: the request's read times out
        hung.bind(("127.0.0.1", 0))
        hung.listen(8)
        settings = Orthanc(url=f"http://127.0.0.1:{hung.getsockname()[1]}", failover=[_url(servers["good"])],
                           username="gw", password="pw", timeout_seconds=0.3)
        forwarder = Forwarder(settings)
        assert forwarder.send(b"DICM") == "abc-123"
        assert forwarder.send(b"DICM") == "abc-123"  # straight to the one that answered


def test_check_config_names_each_server_down_and_says_the_others_serve(
        servers: dict[str, ThreadingHTTPServer]) -> None:
    closed = f"http://127.0.0.1:{free_port()}"
    settings = Orthanc(url=closed, failover=[_url(servers["good"])], username="gw", password="pw", timeout_seconds=2)
    warning = orthanc_warning(cast(Config, SimpleNamespace(orthanc=settings)))
    assert warning == f"Orthanc at {closed} is not reachable (ConnectionError); the other Orthanc servers of the " \
                      "cluster serve meanwhile"
    everything_down = settings.model_copy(update={"failover": [f"http://127.0.0.1:{free_port()}"]})
    warning = orthanc_warning(cast(Config, SimpleNamespace(orthanc=everything_down)))
    assert warning is not None and warning.count("is not reachable") == 2
    assert warning.endswith("objects wait in the spool until one does")
