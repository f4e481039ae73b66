"""Outbound DNS end to end against a real signed zone tree (tests/fixtures/dns on nsd): next
hops as `ringmxctl resolve` shows them (MX order, equal preferences shuffled, implicit MX,
null MX, NXDOMAIN, bogus, insecure, TLSA), delivery over MX routes, failures bounced or
deferred as the answer says, a dead forwarder, and an SMTP session that stays responsive
while one worker resolves thousands of names.

Network rule: only loopback. The fixture's other zones point at 192.0.2.x / 2001:db8::,
so mail goes only to loop.mx.test (mxa 127.0.0.1, mxb 127.0.0.2), loopimplicit.mx.test
(127.0.0.2) and names that fail in DNS; other names are only resolved, never delivered to.
Every MX delivery goes to outbound port P, where a sink listens on 127.0.0.2 only.
"""
import os
import re
import socket
import subprocess
import threading
import time
import uuid

import pytest

from conftest import REPO, RawSmtp, binary, port_free, wait_until
from sinks import CLOSE, Sink, _Handler, _Server
from test_bounce import parse_dsn
from test_outbound import outcome_lines, send

FIXTURE = os.path.join(REPO, "tests", "fixtures", "dns")
LOOP_SENDER = "s@loop.mx.test"  # a sender whose DSNs are themselves deliverable (to the sink)
QUICK_QUEUE = {"retry": ["1s"], "max_lifetime": "60s"}
BODY = (b"From: s@loop.mx.test\r\nTo: u@example.test\r\nSubject: dns test\r\n"
        b"Message-ID: <dns.1@loop.mx.test>\r\n\r\nbody\r\n")


@pytest.fixture(scope="session")
def dns_fixture(tmp_path_factory):
    """The started fixture: {"dir", "forward", "closed_port"}; nsd is stopped at the end."""
    work = str(tmp_path_factory.mktemp("dnsfx"))
    r = subprocess.run([os.path.join(FIXTURE, "start.sh"), work], capture_output=True,
                       timeout=60)
    try:
        if r.returncode == 77:
            pytest.skip("DNS fixture needs nsd and ldnsutils: " + r.stderr.decode())
        assert r.returncode == 0, r.stderr.decode()
        env = dict(line.split("=", 1) for line in open(os.path.join(work, "env")).read().split())
        with open(os.path.join(work, "closed.port")) as f:
            closed = int(f.read())
        yield {"dir": work, "forward": env["RINGMX_DNS_FORWARD"], "closed_port": closed}
    finally:
        subprocess.run([os.path.join(FIXTURE, "stop.sh"), work], timeout=30)


def dns_config(fx, forward=None, unbound="unbound.conf"):
    return {"forward": [forward or fx["forward"]],
            "trust_anchor_file": os.path.join(fx["dir"], "ta.key"),
            "unbound_config": os.path.join(fx["dir"], unbound)}


def mx_server(factory, fx, port, dns=None, **overrides):
    """A ringmx routing every domain by MX, delivering to port on the hosts found."""
    cfg = {"routes": {"*": "mx"}, "dns": dns or dns_config(fx), "outbound": {"port": port},
           "queue": QUICK_QUEUE}
    cfg.update(overrides)
    return factory(**cfg)


def sink_port():
    """A port free on 127.0.0.2 and on 127.0.0.1 (where mxa.loop must find nothing)."""
    for _ in range(50):
        with _Server(("127.0.0.2", 0), _Handler) as probe:
            port = probe.server_address[1]
        if port_free(port, "127.0.0.1") and port_free(port, "127.0.0.2"):
            return port
    raise AssertionError("no port free on both 127.0.0.1 and 127.0.0.2")


class LoopSink(Sink):
    """The recording sink of sinks.py, listening on 127.0.0.2 (mxb.loop, loopimplicit)."""

    def start(self):
        self.server = _Server(("127.0.0.2", self.port), _Handler)
        self.server.sink = self
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self


# ---- ringmxctl resolve --------------------------------------------------------------------

DOMAIN_RE = re.compile(
    r"domain (\S+) status (\S+) dnssec (\S+) mx-dnssec (\S+)( \(implicit MX\))?$")
MX_RE = re.compile(r"mx (\d+) (\S+) dnssec (\S+) addresses (.*)$")
TLSA_RE = re.compile(r"  tlsa _(\d+)\._tcp\.(\S+) dnssec (\S+): (.*)$")


def resolve(server, domain):
    """`ringmxctl resolve` parsed: {"status", "dnssec", "implicit", "reason", "mx": [...]}."""
    out = server.ctl("resolve", domain).stdout.decode()
    lines = out.splitlines()
    m = DOMAIN_RE.match(lines[0])
    assert m and m.group(1) == domain, out
    res = {"status": m.group(2), "dnssec": m.group(3), "mx_dnssec": m.group(4),
           "implicit": m.group(5) is not None, "reason": "", "mx": [], "text": out}
    for line in lines[1:]:
        if line.startswith("reason "):
            res["reason"] = line[len("reason "):]
        elif (h := MX_RE.match(line)):
            res["mx"].append({"pref": int(h.group(1)), "host": h.group(2),
                              "dnssec": h.group(3), "addresses": h.group(4).split(),
                              "tlsa": None})
        elif (t := TLSA_RE.match(line)):
            host = res["mx"][-1]
            assert t.group(2) == host["host"], out
            host["tlsa"] = {"port": int(t.group(1)), "dnssec": t.group(3),
                            "records": t.group(4)}
        else:
            raise AssertionError(f"unexpected line {line!r} in:\n{out}")
    return res


@pytest.fixture
def resolver(ringmx_factory, dns_fixture):
    """A ringmx that is only asked to resolve (outbound port 25: never used to connect)."""
    return mx_server(ringmx_factory, dns_fixture, 25)


def test_resolve_mx_order_and_equal_preferences_shuffled(resolver):
    orders = set()
    for _ in range(20):
        res = resolve(resolver, "multi.mx.test")
        assert (res["status"], res["dnssec"], res["mx_dnssec"]) == ("ok", "secure", "secure")
        assert not res["implicit"]
        hosts = [(h["pref"], h["host"]) for h in res["mx"]]
        assert hosts[0] == (10, "mx1.multi.mx.test"), res["text"]
        assert {h for _, h in hosts[1:3]} == {"mx2a.multi.mx.test", "mx2b.multi.mx.test"}
        assert [p for p, _ in hosts[1:3]] == [20, 20]
        assert hosts[3] == (30, "mx3.multi.mx.test") and len(hosts) == 4
        assert all(h["dnssec"] == "secure" for h in res["mx"]), res["text"]
        orders.add(tuple(h for _, h in hosts[1:3]))
    assert len(orders) == 2, f"equal preferences never shuffled: {orders}"
    first = resolve(resolver, "multi.mx.test")["mx"]
    assert first[0]["addresses"] == ["192.0.2.1", "2001:db8::1"]  # IPv4 first by default
    assert first[3]["addresses"] == ["2001:db8::4"]


def test_resolve_implicit_mx(resolver):
    res = resolve(resolver, "implicit.mx.test")
    assert res["status"] == "ok" and res["implicit"], res["text"]
    (host,) = res["mx"]
    assert host["host"] == "implicit.mx.test"
    assert host["addresses"] == ["192.0.2.10", "2001:db8::10"]
    assert host["dnssec"] == "secure"


def test_resolve_failures(resolver):
    null = resolve(resolver, "nullmx.mx.test")
    assert null["status"] == "permfail" and null["mx"] == [], null["text"]
    assert null["reason"].startswith("556 5.1.10"), null["text"]

    missing = resolve(resolver, f"no-{uuid.uuid4().hex[:8]}.mx.test")
    assert missing["status"] == "permfail" and missing["mx"] == [], missing["text"]
    assert missing["reason"].startswith("550 5.1.2"), missing["text"]
    assert missing["dnssec"] == "secure"  # a validated denial

    bogus = resolve(resolver, "bogus.test")
    assert (bogus["status"], bogus["dnssec"]) == ("tempfail", "bogus"), bogus["text"]
    assert re.match(r"4\d\d 4\.7\.5 ", bogus["reason"]), bogus["text"]
    assert bogus["mx"] == []


def test_resolve_insecure_is_usable_but_marked(resolver):
    res = resolve(resolver, "insecure.test")
    assert (res["status"], res["dnssec"], res["mx_dnssec"]) == ("ok", "insecure", "insecure")
    (host,) = res["mx"]
    assert host["host"] == "mail.insecure.test" and host["dnssec"] == "insecure"
    assert host["addresses"] == ["192.0.2.20"]
    # the zone publishes a TLSA for it, but an insecure answer is no usable TLSA
    assert host["tlsa"]["dnssec"] == "insecure"
    assert host["tlsa"]["records"].startswith("none"), res["text"]


def test_resolve_tlsa_secure_only(resolver):
    res = resolve(resolver, "multi.mx.test")
    tlsa = {h["host"]: h["tlsa"] for h in res["mx"]}
    mx1 = tlsa["mx1.multi.mx.test"]
    assert (mx1["port"], mx1["dnssec"]) == (25, "secure")
    assert mx1["records"] == "3 1 1 " + "0123456789abcdef" * 4
    assert tlsa["mx2a.multi.mx.test"]["records"].startswith("none"), res["text"]


def test_resolve_tlsa_follows_outbound_port(ringmx_factory, dns_fixture):
    server = mx_server(ringmx_factory, dns_fixture, 2525)
    (mx1,) = [h for h in resolve(server, "multi.mx.test")["mx"]
              if h["host"] == "mx1.multi.mx.test"]
    assert mx1["tlsa"]["port"] == 2525 and mx1["tlsa"]["records"].startswith("none")


# ---- delivery over MX routes --------------------------------------------------------------

@pytest.fixture
def loop_sink():
    with LoopSink(port=sink_port()) as sink:
        yield sink


def deliver(server, sink, rcpt):
    """Sends one message to rcpt; checks it reaches sink; returns its `delivered` log line."""
    qid = send(server, BODY, sender="a@client.example", rcpts=[rcpt])
    (msg,) = sink.wait_accepted(1)
    assert (msg.sender, msg.rcpts) == ("a@client.example", [rcpt])
    (line,) = wait_until(lambda: outcome_lines(server, qid, "delivered"), 10, "delivered log")
    return line


def test_mx_fallback_delivers_to_second_mx(ringmx_factory, dns_fixture, loop_sink):
    server = mx_server(ringmx_factory, dns_fixture, loop_sink.port)
    line = deliver(server, loop_sink, "u@loop.mx.test")
    assert "relay=mxb.loop.mx.test" in line, line
    wait_until(lambda: server.queue() == [], 10, "an empty queue")


class RefusingGreeter(threading.Thread):
    """127.0.0.1:port answers every connection with a 554 greeting and hangs up."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.sock = socket.create_server(("127.0.0.1", port))
        self.sock.settimeout(0.2)
        self.greeted = 0
        self.done = threading.Event()

    def run(self):
        while not self.done.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"554 5.3.2 mxa is not taking mail\r\n")
                self.greeted += 1

    def stop(self):
        self.done.set()
        self.join(5)
        self.sock.close()


def test_mx_fallback_after_a_refusing_greeting(ringmx_factory, dns_fixture, loop_sink):
    """RFC 5321 §3.8: a 554 greeting sends us to the next MX, with a fresh session."""
    greeter = RefusingGreeter(loop_sink.port)
    greeter.start()
    try:
        server = mx_server(ringmx_factory, dns_fixture, loop_sink.port)
        line = deliver(server, loop_sink, "u@loop.mx.test")
        assert "relay=mxb.loop.mx.test" in line, line
        assert greeter.greeted >= 1, "mxa was never tried"
    finally:
        greeter.stop()


@pytest.mark.parametrize("fault", ["close", "421"])
def test_session_failure_moves_to_the_next_mx_in_the_same_attempt(ringmx_factory, dns_fixture,
                                                                  loop_sink, fault):
    """mxa drops the connection (or says 421) in the middle of the transactions: they go on
    to mxb at once, not to the retry schedule."""
    def data(txn):
        return CLOSE if fault == "close" else "421 4.3.2 mxa is going down"

    with Sink(port=loop_sink.port, data_policy=data, extensions=("PIPELINING", "CHUNKING")) \
            as mxa:
        server = mx_server(ringmx_factory, dns_fixture, loop_sink.port)
        qids = [send(server, BODY, sender="a@client.example", rcpts=[f"u{i}@loop.mx.test"])
                for i in range(5)]
        loop_sink.wait_accepted(5)
        wait_until(lambda: server.queue() == [], 10, "an empty queue")
        for qid in qids:
            (line,) = outcome_lines(server, qid, "delivered")
            assert "relay=mxb.loop.mx.test" in line and "attempt=1" in line, line
            assert outcome_lines(server, qid, "deferred") == []
        assert mxa.messages, "mxa was never tried"
        assert "next-address" in server.logtext()


def test_implicit_mx_delivers(ringmx_factory, dns_fixture, loop_sink):
    server = mx_server(ringmx_factory, dns_fixture, loop_sink.port)
    line = deliver(server, loop_sink, "u@loopimplicit.mx.test")
    assert "relay=loopimplicit.mx.test" in line, line


@pytest.mark.parametrize("domain, code, status", [
    ("nullmx.mx.test", "556", "5.1.10"),
    (f"nx-{uuid.uuid4().hex[:8]}.mx.test", "550", "5.1.2"),
])
def test_permanent_dns_failure_bounces(ringmx_factory, dns_fixture, loop_sink, domain, code,
                                       status):
    server = mx_server(ringmx_factory, dns_fixture, loop_sink.port)
    rcpt = f"u@{domain}"
    qid = send(server, BODY, sender=LOOP_SENDER, rcpts=[rcpt])
    (dsn,) = loop_sink.wait_accepted(1)
    assert (dsn.sender, dsn.rcpts) == ("", [LOOP_SENDER])
    _, groups, _ = parse_dsn(dsn)
    (r,) = groups[1:]
    assert r["Final-Recipient"] == f"rfc822; {rcpt}"
    assert r["Action"] == "failed"
    assert r["Status"] == status
    (line,) = wait_until(lambda: outcome_lines(server, qid, "bounced"), 10, "bounced log")
    assert f"code={code}" in line and f"dsn={status}" in line, line
    failed = [s for s in server.logtext().splitlines()
              if "destination-failed" in s and domain in s]
    assert failed and f"{code} {status}" in failed[0], failed
    wait_until(lambda: server.queue() == [], 10, "an empty queue")


def test_bogus_is_deferred_never_delivered(ringmx_factory, dns_fixture, loop_sink):
    server = mx_server(ringmx_factory, dns_fixture, loop_sink.port)
    qid = send(server, BODY, sender=LOOP_SENDER, rcpts=["u@bogus.test"])
    # first attempt and one retry 1 s later: both deferred
    deferred = wait_until(lambda: len(outcome_lines(server, qid, "deferred")) >= 2
                          and outcome_lines(server, qid, "deferred"), 10, "two deferrals")
    for line in deferred:
        assert "dsn=4.7.5" in line and 'relay=""' in line, line  # no host was tried
    failed = [s for s in server.logtext().splitlines()
              if "destination-failed" in s and "bogus.test" in s]
    assert failed and all("dnssec=bogus" in s and "4.7.5" in s for s in failed), failed
    assert not outcome_lines(server, qid, "bounced")
    assert not outcome_lines(server, qid, "delivered")
    (m,) = server.queue()
    assert m["id"] == qid
    assert loop_sink.connections == 0 and loop_sink.messages == []


def test_forwarder_down_defers(ringmx_factory, dns_fixture, loop_sink):
    fx = dns_fixture
    dns = dns_config(fx, forward=f"127.0.0.1@{fx['closed_port']}",
                     unbound="unbound-fastfail.conf")
    server = mx_server(ringmx_factory, fx, loop_sink.port, dns=dns)
    qid = send(server, BODY, sender=LOOP_SENDER, rcpts=["u@loop.mx.test"])
    (line,) = wait_until(lambda: outcome_lines(server, qid, "deferred")[:1], 15, "a deferral")
    assert re.search(r"dsn=4\.4\.\d", line), line
    assert "4.4.3" in line, line
    assert not outcome_lines(server, qid, "bounced")
    (m,) = server.queue()
    assert m["id"] == qid
    assert loop_sink.messages == []


# ---- responsiveness under load ------------------------------------------------------------

class NoopProbe(threading.Thread):
    """Sends NOOP after NOOP on its own session, recording each round trip."""

    def __init__(self, server):
        super().__init__(daemon=True)
        self.smtp = RawSmtp(server, timeout=10)
        assert self.smtp.reply()[0] == 220
        assert self.smtp.cmd("EHLO probe.example")[0] == 250
        self.samples = []  # (when sent, round trip) in time.monotonic() seconds
        self.error = None
        self.stopping = threading.Event()

    def run(self):
        try:
            while not self.stopping.is_set():
                t = time.monotonic()
                code, text = self.smtp.cmd("NOOP")
                self.samples.append((t, time.monotonic() - t))
                assert code == 250, text
                time.sleep(0.005)
        except Exception as e:  # reported by the test, not lost in the thread
            self.error = e

    def finish(self):
        self.stopping.set()
        self.join(15)
        self.smtp.close()
        assert self.error is None, f"probe failed: {self.error!r}"


def submit_many_domains(server, domains, per_message):
    """Messages from LOOP_SENDER, each to per_message recipients at distinct domains, with the
    RCPTs pipelined."""
    s = RawSmtp(server, timeout=30)
    try:
        assert s.reply()[0] == 220
        code, text = s.cmd("EHLO load.example")
        assert code == 250 and "PIPELINING" in text, text
        for i in range(0, len(domains), per_message):
            chunk = domains[i:i + per_message]
            s.send(f"MAIL FROM:<{LOOP_SENDER}>\r\n"
                   + "".join(f"RCPT TO:<u@{d}>\r\n" for d in chunk) + "DATA\r\n")
            replies = [s.reply() for _ in range(len(chunk) + 2)]
            assert all(c == 250 for c, _ in replies[:-1]), replies[:3]
            assert replies[-1][0] == 354, replies[-1]
            s.send(BODY + b".\r\n")
            assert s.reply()[0] == 250
        assert s.cmd("QUIT")[0] == 221
    finally:
        s.close()


def test_session_stays_responsive_while_resolving(ringmx_factory, dns_fixture, tmp_path):
    n, per_message = 2000, 500
    port = sink_port()
    record = tmp_path / "sink.record"
    sink = subprocess.Popen([binary("ringmx-bench"), "sink", "--listen", f"127.0.0.2:{port}",
                             "--record", str(record), "--threads", "1"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_until(lambda: not port_free(port, "127.0.0.2") or sink.poll() is not None, 10,
                   "the sink")
        assert sink.poll() is None, sink.stderr.read().decode()
        server = mx_server(ringmx_factory, dns_fixture, port, workers=1,
                           limits={"max_recipients": per_message})
        tag = uuid.uuid4().hex[:6]
        domains = [f"n{i:04d}-{tag}.mx.test" for i in range(n)]
        probe = NoopProbe(server)
        probe.start()
        t0 = time.monotonic()
        try:
            submit_many_domains(server, domains, per_message)
            wait_until(lambda: server.stats()["rcpts_bounced"] >= n, 30, f"{n} bounces")
            t1 = time.monotonic()
            time.sleep(0.1)  # a few NOOPs after the last lookup
        finally:
            probe.finish()
        rtts = sorted(rtt for _, rtt in probe.samples)
        during = [rtt for sent, rtt in probe.samples if t0 <= sent <= t1]
        print(f"\n{n} NXDOMAIN lookups in {t1 - t0:.2f} s; NOOP round trips: {len(rtts)} "
              f"({len(during)} during the load), max {rtts[-1] * 1000:.1f} ms, "
              f"median {rtts[len(rtts) // 2] * 1000:.1f} ms")
        assert len(during) >= 5, probe.samples  # the probe really ran while lookups did
        assert rtts[-1] < 1.0, f"a NOOP waited {rtts[-1]:.3f} s"

        log = server.logtext()
        assert log.count("dsn=5.1.2") >= n
        # every message's DSN reached the sink: the lookups were real, the loop kept going
        wait_until(lambda: record.exists() and len(record.read_text().splitlines()) >= n
                   // per_message, 15, "the DSNs at the sink")
        wait_until(lambda: server.queue() == [], 15, "an empty queue")
    finally:
        sink.terminate()
        sink.wait(10)
