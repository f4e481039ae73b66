"""Outbound TLS end to end: ringmx relays to the recording sink of sinks.py offering STARTTLS
(Python's ssl with the fixture certificates), under each `outbound.tls` mode, and the
`delivered` / `deferred` log lines say how the session was secured (`tls=none|anonymous|
trusted|verified|dane`). Misbehaving sinks (a handshake that fails, a forged reply injected
behind the 220 to STARTTLS) check the client side's robustness.

`verify` needs a name to check: the route `[localhost]:PORT` (libunbound answers localhost
itself, 127.0.0.1 first), and the fixture certificate carries localhost in its SAN.
"""
import re

import pytest

from conftest import tls_file, wait_until
from sinks import GARBAGE, INJECT, Sink
from test_outbound import SHORT_QUEUE, outcome_lines, send

BODY = (b"From: from@client.example\r\nTo: to@example.test\r\nSubject: outbound tls\r\n"
        b"Message-ID: <tls.out.1@client.example>\r\n\r\nrelayed over TLS\r\n")
ECDSA = (tls_file("ecdsa.pem"), tls_file("ecdsa.key"))


def tls_field(line):
    m = re.search(r"\btls=(\w+)", line)
    assert m, f"no tls= field in: {line}"
    return m.group(1)


def relay(factory, sink, mode, route=None, **outbound):
    """A ringmx relaying everything to sink (by address, or by route) with outbound.tls mode."""
    return factory(routes={"*": route or sink.route}, queue=SHORT_QUEUE,
                   outbound=dict(tls=mode, **outbound))


def delivered(server, sink, qid):
    """The message reached sink; returns (the sink's Message, the delivered log line)."""
    (msg,) = sink.wait_accepted(1)
    (line,) = wait_until(lambda: outcome_lines(server, qid, "delivered"), 10, "delivered")
    return msg, line


def deferred_not_delivered(server, sink, qid):
    """qid is deferred (and still queued), and sink has no message; returns the log line."""
    lines = wait_until(lambda: outcome_lines(server, qid, "deferred"), 20, "a deferral")
    assert sink.accepted() == [], "delivered although the TLS policy forbids it"
    assert "MAIL" not in sink.verbs, f"a transaction was started: {sink.verbs}"
    assert [m["id"] for m in server.queue()] == [qid]
    return lines[0]


def localhost_route(sink):
    return f"[localhost]:{sink.port}"


def test_none_stays_in_plaintext(ringmx_factory):
    with Sink(tls=ECDSA) as sink:
        server = relay(ringmx_factory, sink, "none")
        msg, line = delivered(server, sink, send(server, BODY))
        assert msg.tls == "" and "STAR" not in sink.verbs
        assert tls_field(line) == "none"


def test_may_uses_starttls_anonymous(ringmx_factory):
    with Sink(tls=ECDSA) as sink:
        server = relay(ringmx_factory, sink, "may")
        msg, line = delivered(server, sink, send(server, BODY))
        assert msg.tls == "TLSv1.3", sink.tls_sessions
        assert tls_field(line) == "anonymous"  # no CA that knows the sink's certificate


def test_may_with_the_ca_authenticates(ringmx_factory):
    with Sink(tls=ECDSA) as sink:
        server = relay(ringmx_factory, sink, "may", route=localhost_route(sink),
                       tls_ca_file=tls_file("ca.pem"))
        msg, line = delivered(server, sink, send(server, BODY))
        assert msg.tls == "TLSv1.3"
        assert tls_field(line) in ("trusted", "verified"), line


def test_may_falls_back_to_plaintext_after_a_failed_handshake(ringmx_factory):
    """STARTTLS offered, then garbage instead of a ServerHello: `may` delivers in plaintext
    (a new connection without STARTTLS), and says so."""
    with Sink(tls=ECDSA, starttls_policy=GARBAGE) as sink:
        server = relay(ringmx_factory, sink, "may")
        qid = send(server, BODY)
        msg, line = delivered(server, sink, qid)
        assert msg.tls == "" and sink.tls_failures >= 1
        assert tls_field(line) == "none"
        others = [ln for ln in server.logtext().splitlines()
                  if ln != line and re.search(r"tls|handshake|starttls", ln, re.I)
                  and " accepted " not in ln]
        assert others, "the failed handshake was not logged"


def test_encrypt_refuses_a_peer_without_starttls(ringmx_factory):
    with Sink() as sink:
        server = relay(ringmx_factory, sink, "encrypt")
        deferred_not_delivered(server, sink, send(server, BODY))


def test_encrypt_defers_after_a_failed_handshake(ringmx_factory):
    with Sink(tls=ECDSA, starttls_policy=GARBAGE) as sink:
        server = relay(ringmx_factory, sink, "encrypt")
        deferred_not_delivered(server, sink, send(server, BODY))
        assert sink.tls_failures >= 1


def test_encrypt_delivers_over_tls(ringmx_factory):
    with Sink(tls=ECDSA) as sink:
        server = relay(ringmx_factory, sink, "encrypt")
        msg, line = delivered(server, sink, send(server, BODY))
        assert msg.tls == "TLSv1.3" and tls_field(line) == "anonymous"


def test_verify_with_the_fixture_ca(ringmx_factory):
    with Sink(tls=ECDSA) as sink:
        server = relay(ringmx_factory, sink, "verify", route=localhost_route(sink),
                       tls_ca_file=tls_file("ca.pem"))
        msg, line = delivered(server, sink, send(server, BODY))
        assert msg.tls == "TLSv1.3" and tls_field(line) == "verified"


@pytest.mark.parametrize("cert,ca", [
    ("other", "ca.pem"),  # trusted, but for other.ringmx.test
    ("wrongname", "ca.pem"),  # trusted, for a name that is nowhere near
    ("expired", "ca.pem"),  # the right name, expired
    ("ca2-leaf", "ca.pem"),  # the right name, from a CA we do not trust
    ("ecdsa", "ca2.pem"),  # the right name, and only another CA is trusted
])
def test_verify_refuses_a_bad_certificate(ringmx_factory, cert, ca):
    with Sink(tls=(tls_file(f"{cert}.pem"), tls_file(f"{cert}.key"))) as sink:
        server = relay(ringmx_factory, sink, "verify", route=localhost_route(sink),
                       tls_ca_file=tls_file(ca))
        deferred_not_delivered(server, sink, send(server, BODY))


def test_verify_refuses_a_peer_without_starttls(ringmx_factory):
    with Sink() as sink:
        server = relay(ringmx_factory, sink, "verify", route=localhost_route(sink),
                       tls_ca_file=tls_file("ca.pem"))
        deferred_not_delivered(server, sink, send(server, BODY))


def test_per_route_tls_overrides_the_default(ringmx_factory):
    """outbound.tls none, but the route to this next hop says encrypt."""
    with Sink(tls=ECDSA) as sink:
        server = ringmx_factory(routes={"*": {"nexthop": sink.route, "tls": "encrypt"}},
                                queue=SHORT_QUEUE, outbound={"tls": "none"})
        msg, line = delivered(server, sink, send(server, BODY))
        assert msg.tls == "TLSv1.3" and tls_field(line) == "anonymous"


def test_starttls_response_injection_ignored(ringmx_factory):
    """The sink answers STARTTLS with "220 go\\r\\n250 forged\\r\\n" in one segment. The
    forged line, read before the handshake, must be thrown away: the EHLO after TLS is
    answered by the real reply (which offers CHUNKING, so the message goes by BDAT), and
    every later reply is matched to its own command (the DATA reply is in the log)."""
    marker = "2.0.0 stored as F0RGEDN0T"
    with Sink(tls=ECDSA, starttls_policy=INJECT, data_policy=lambda txn: f"250 {marker}",
              extensions=("PIPELINING", "8BITMIME", "ENHANCEDSTATUSCODES",
                          "CHUNKING")) as sink:
        server = relay(ringmx_factory, sink, "may")
        msg, line = delivered(server, sink, send(server, BODY))
        assert msg.tls == "TLSv1.3" and msg.verb == "BDAT", (msg.tls, msg.verb, sink.verbs)
        assert marker in line, line
        assert "forged" not in server.logtext()
        after = sink.verbs[sink.verbs.index("STAR") + 1:]
        assert after[:1] == ["EHLO"], sink.verbs  # a new EHLO first, nothing acted on before


def test_outbound_session_resumed_on_the_next_connection(ringmx_factory):
    with Sink(tls=ECDSA) as sink:
        # one worker: the session cache is a worker's own, and both messages must use it
        server = ringmx_factory(routes={"*": sink.route}, queue=SHORT_QUEUE, workers=1,
                                outbound={"tls": "may", "max_messages_per_connection": 1})
        first = send(server, BODY)
        delivered(server, sink, first)
        second = send(server, BODY)
        wait_until(lambda: outcome_lines(server, second, "delivered"), 15, "2nd delivery")
        assert sink.connections >= 2
        assert len(sink.tls_sessions) >= 2, sink.tls_sessions
        assert not sink.tls_sessions[0]["resumed"]
        assert sink.tls_sessions[-1]["resumed"], sink.tls_sessions
