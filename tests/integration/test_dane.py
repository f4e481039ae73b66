"""DANE (RFC 7672) end to end on the signed DNS fixture: the zone ringmx.test publishes, for
loopback MX hosts, TLSA records that start.sh computes from the test PKI (DANE-EE 3 1 1 of
the ECDSA fixture key, DANE-TA 2 0 1 of the test CA, a record for a key nobody has, and a
correct record whose signature start.sh breaks); insecure.test has a loopback host whose
(wrong) TLSA is unsigned. With `outbound.tls: dane` a secure usable TLSA makes TLS and a
match mandatory (`tls=dane` in the delivered line), a bogus TLSA defers without connecting,
and an insecure one leaves delivery opportunistic (`may`).

Every MX host here is 127.0.0.2; the sink listens there on outbound.port (LoopSink).
"""
import subprocess

import pytest

from conftest import tls_file
from test_dns import LoopSink, dns_fixture, mx_server, resolve, sink_port  # noqa: F401
from test_outbound import outcome_lines, send
from test_tls_outbound import BODY, ECDSA, deferred_not_delivered, delivered, tls_field

OTHER = (tls_file("other.pem"), tls_file("other.key"))


def tlsa_hash(pem, selector):
    """SHA-256 of a certificate (selector 0) or of its SubjectPublicKeyInfo (1), as hex."""
    der = subprocess.run(["openssl", "x509", "-in", pem, "-outform", "DER"],
                         capture_output=True, check=True, timeout=10).stdout
    if selector == 1:
        pub = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-pubkey"],
                             input=der, capture_output=True, check=True, timeout=10).stdout
        der = subprocess.run(["openssl", "pkey", "-pubin", "-outform", "DER"], input=pub,
                             capture_output=True, check=True, timeout=10).stdout
    return subprocess.run(["openssl", "dgst", "-sha256", "-r"], input=der,
                          capture_output=True, check=True, timeout=10).stdout.split()[0].decode()


@pytest.fixture
def dane_sink(request):
    """A LoopSink on 127.0.0.2 with the certificate pair the test's parameter names (or the
    ECDSA fixture), or no TLS at all for None."""
    tls = getattr(request, "param", ECDSA)
    with LoopSink(port=sink_port(), tls=tls) as sink:
        yield sink


def dane_server(factory, fx, sink, mode="dane"):
    return mx_server(factory, fx, sink.port, outbound={"port": sink.port, "tls": mode})


# ---- the fixture itself (runs without TLS in ringmx) ---------------------------------------

def test_fixture_tlsa_records_as_resolved(ringmx_factory, dns_fixture):
    server = mx_server(ringmx_factory, dns_fixture, 2525)
    ee_spki = tlsa_hash(tls_file("ecdsa.pem"), 1)
    ca_cert = tlsa_hash(tls_file("ca.pem"), 0)
    expect = {"dane-ee.ringmx.test": ("ee.ringmx.test", "secure", f"3 1 1 {ee_spki}"),
              "dane-ta.ringmx.test": ("mx.ringmx.test", "secure", f"2 0 1 {ca_cert}"),
              "dane-eebad.ringmx.test": ("eebad.ringmx.test", "secure", "3 1 1 0011"),
              "dane-bogus.ringmx.test": ("tlsabogus.ringmx.test", "bogus", None),
              "dane-none.insecure.test": ("loop.insecure.test", "insecure", "none")}
    for domain, (host, dnssec, records) in expect.items():
        res = resolve(server, domain)
        assert res["status"] == "ok", res["text"]
        (mx,) = res["mx"]
        assert mx["host"] == host and mx["addresses"] == ["127.0.0.2"], res["text"]
        assert mx["tlsa"]["port"] == 2525, res["text"]  # the wildcard owner answers any port
        assert mx["tlsa"]["dnssec"] == dnssec, res["text"]
        if records is not None:
            assert mx["tlsa"]["records"].startswith(records), res["text"]
        if dnssec == "bogus":  # only the TLSA: the MX and the address stayed secure
            assert mx["dnssec"] == "secure" and res["dnssec"] == "secure", res["text"]


# ---- delivery -----------------------------------------------------------------------------

@pytest.mark.parametrize("domain,host", [
    # 3 1 1 of the sink's key; the certificate's names (mx.ringmx.test, not ee.ringmx.test)
    # do not matter for DANE-EE
    ("dane-ee.ringmx.test", "ee.ringmx.test"),
    # 2 0 1 of the test CA, and the MX host mx.ringmx.test is the certificate's name
    ("dane-ta.ringmx.test", "mx.ringmx.test"),
])
def test_dane_match_delivers(ringmx_factory, dns_fixture, dane_sink, domain, host):
    server = dane_server(ringmx_factory, dns_fixture, dane_sink)
    msg, line = delivered(server, dane_sink, send(server, BODY, rcpts=[f"u@{domain}"]))
    assert msg.tls == "TLSv1.3" and tls_field(line) == "dane", line
    assert f"relay={host}" in line, line


@pytest.mark.parametrize("dane_sink,domain", [
    (ECDSA, "dane-eebad.ringmx.test"),  # 3 1 1 of a key nobody has
    (None, "dane-ee.ringmx.test"),  # a secure usable TLSA makes STARTTLS mandatory
    (OTHER, "dane-ta.ringmx.test"),  # chains to the TLSA's CA, but for other.ringmx.test
], indirect=["dane_sink"])
def test_dane_mismatch_defers(ringmx_factory, dns_fixture, dane_sink, domain):
    server = dane_server(ringmx_factory, dns_fixture, dane_sink)
    deferred_not_delivered(server, dane_sink, send(server, BODY, rcpts=[f"u@{domain}"]))


def test_bogus_tlsa_defers_without_connecting(ringmx_factory, dns_fixture, dane_sink):
    server = dane_server(ringmx_factory, dns_fixture, dane_sink)
    deferred_not_delivered(server, dane_sink,
                           send(server, BODY, rcpts=["u@dane-bogus.ringmx.test"]))
    assert dane_sink.connections == 0, "connected to a host whose TLSA is bogus"


def test_insecure_tlsa_is_opportunistic(ringmx_factory, dns_fixture, dane_sink):
    """insecure.test's TLSA (for a key nobody has) is unsigned: ignored, delivery as `may`."""
    server = dane_server(ringmx_factory, dns_fixture, dane_sink)
    qid = send(server, BODY, rcpts=["u@dane-none.insecure.test"])
    msg, line = delivered(server, dane_sink, qid)
    assert msg.tls == "TLSv1.3" and tls_field(line) == "anonymous", line
    assert outcome_lines(server, qid, "deferred") == []


@pytest.mark.parametrize("dane_sink", [None], indirect=True)
def test_insecure_without_starttls_still_delivers(ringmx_factory, dns_fixture, dane_sink):
    server = dane_server(ringmx_factory, dns_fixture, dane_sink)
    msg, line = delivered(server, dane_sink,
                          send(server, BODY, rcpts=["u@dane-none.insecure.test"]))
    assert msg.tls == "" and tls_field(line) == "none", line


def test_may_ignores_tlsa(ringmx_factory, dns_fixture):
    """outbound.tls may: even a mismatching secure TLSA does not stop delivery."""
    with LoopSink(port=sink_port(), tls=ECDSA) as sink:
        server = dane_server(ringmx_factory, dns_fixture, sink, mode="may")
        msg, line = delivered(server, sink, send(server, BODY,
                                                 rcpts=["u@dane-eebad.ringmx.test"]))
        assert msg.tls == "TLSv1.3" and tls_field(line) == "anonymous", line

