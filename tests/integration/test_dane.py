"""DANE (RFC 7672) end to end on the signed DNS fixture: the zone ringmx.test publishes, for
loopback MX hosts, TLSA records that start.sh takes from tests/fixtures/tls/tlsa.txt (3 1 1 of
the ECDSA fixture key, DANE-TA 2 0 1 of the test CA, a record for a key nobody has, and a
correct record whose signature start.sh breaks); insecure.test has a loopback host whose
(wrong) TLSA is unsigned. With `outbound.tls: dane` a secure usable TLSA makes TLS and a
match mandatory (`tls=dane` in the delivered line), a bogus TLSA defers without connecting,
and an insecure one leaves delivery opportunistic (`may`).

Every MX host here is 127.0.0.2; the sink listens there on outbound.port (LoopSink).
"""
import pytest

from conftest import tls_file
from test_dns import LoopSink, dns_fixture, mx_server, resolve, sink_port  # noqa: F401
from test_outbound import outcome_lines, send
from test_tls_outbound import BODY, ECDSA, deferred_not_delivered, delivered, tls_field

# DANE-TA(2) needs the trust anchor in the chain the server sends (RFC 7671 §5.2.2)
ECDSA_CHAIN = (tls_file("ecdsa-chain.pem"), tls_file("ecdsa.key"))
OTHER_CHAIN = (["other.pem", "ca.pem"], "other.key")
CA2_CHAIN = (["ca2-leaf.pem", "ca2.pem"], "ca2-leaf.key")


def fixture_tlsa(name, usage, selector, mtype):
    """Record data for a certificate of the test PKI, from its tlsa.txt (make-certs.sh)."""
    with open(tls_file("tlsa.txt")) as f:
        for line in f:
            n, u, s, m, data = line.split()
            if (n, int(u), int(s), int(m)) == (name, usage, selector, mtype):
                return data
    raise KeyError(name)


@pytest.fixture
def dane_sink(request, tmp_path):
    """A LoopSink on 127.0.0.2 serving the test's parameter: a (certificate, key) pair, a
    ([PEM files of the chain], key name) to concatenate, None for no TLS at all; the ECDSA
    fixture pair by default."""
    tls = getattr(request, "param", ECDSA)
    if tls is not None and isinstance(tls[0], list):
        chain = tmp_path / "chain.pem"
        chain.write_bytes(b"".join(open(tls_file(p), "rb").read() for p in tls[0]))
        tls = (str(chain), tls_file(tls[1]))
    with LoopSink(port=sink_port(), tls=tls) as sink:
        yield sink


def dane_server(factory, fx, sink, mode="dane"):
    return mx_server(factory, fx, sink.port, outbound={"port": sink.port, "tls": mode})


# ---- the fixture itself (runs without TLS in ringmx) ---------------------------------------

def test_fixture_tlsa_records_as_resolved(ringmx_factory, dns_fixture):
    server = mx_server(ringmx_factory, dns_fixture, 2525)
    ee_spki = fixture_tlsa("ecdsa", 3, 1, 1)
    ca_cert = fixture_tlsa("ca", 2, 0, 1)
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

@pytest.mark.parametrize("dane_sink,domain,host", [
    # 3 1 1 of the sink's key; the certificate's names (mx.ringmx.test, not ee.ringmx.test)
    # do not matter for DANE-EE
    (ECDSA, "dane-ee.ringmx.test", "ee.ringmx.test"),
    # 2 0 1 of the test CA, and the MX host mx.ringmx.test is the certificate's name
    (ECDSA_CHAIN, "dane-ta.ringmx.test", "mx.ringmx.test"),
], indirect=["dane_sink"])
def test_dane_match_delivers(ringmx_factory, dns_fixture, dane_sink, domain, host):
    server = dane_server(ringmx_factory, dns_fixture, dane_sink)
    msg, line = delivered(server, dane_sink, send(server, BODY, rcpts=[f"u@{domain}"]))
    assert msg.tls == "TLSv1.3" and tls_field(line) == "dane", line
    assert f"relay={host}" in line, line


@pytest.mark.parametrize("dane_sink,domain", [
    (ECDSA, "dane-eebad.ringmx.test"),  # 3 1 1 of a key nobody has
    (None, "dane-ee.ringmx.test"),  # a secure usable TLSA makes STARTTLS mandatory
    (OTHER_CHAIN, "dane-ta.ringmx.test"),  # chains to the TLSA's CA, for other.ringmx.test
    (CA2_CHAIN, "dane-ta.ringmx.test"),  # the right name, but from another CA
    (ECDSA, "dane-ta.ringmx.test"),  # the TLSA's CA is not in the chain the server sent
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

