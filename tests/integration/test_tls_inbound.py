"""Inbound TLS end to end, as users meet it: a ringmx with the three listeners of the design
(mx `tls: may`, submission `tls: required`, submission `tls: implicit`) on the ECDSA fixture
certificate, driven by swaks, openssl s_client, Python's smtplib/ssl and testssl.sh.

Mail for the relay domain is relayed on to a recording sink, so each delivery test sees both
ends: the accepted log line says `tls=TLSv1.x/SUITE`, and the relayed message's Received
header says `with ESMTPS`. The robustness tests (STARTTLS injection, garbage instead of a
ClientHello, a stalled handshake, a close in the middle of a record) check that the bad
client gets nothing and the next client is still served.

Listeners relay by mynetworks (auth "off"): AUTH is another issue's, and these tests are
about TLS.
"""
import json
import re
import shutil
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

from conftest import RawSmtp, free_port, smtp_client, tls_client_context, tls_file, wait_until
from sinks import Sink
from test_outbound import SHORT_QUEUE, split_received
from test_smtp import queued_id

CERT = {"certificate": tls_file("ecdsa.pem"), "key": tls_file("ecdsa.key")}
NAME = "mx.ringmx.test"  # the fixture certificate's name, and the server's hostname
TLS_FIELD = re.compile(r" tls=\"?(TLSv1\.[23])/(TLS_[A-Z0-9_]+)\"?(\s|$)")
BODY = (b"From: s@client.example\r\nTo: u@example.test\r\nSubject: over TLS\r\n"
        b"Message-ID: <tls.1@client.example>\r\n\r\nsent over TLS\r\n")


def distinct_ports(n):
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return list(ports)


def tls_server(factory, sink=None, tls=None, **overrides):
    """A ringmx with listeners .mx (may), .submission (required), .smtps (implicit), relaying
    everything to sink when one is given."""
    mx, submission, smtps = distinct_ports(3)
    cfg = {"listen": [
        {"address": f"127.0.0.1:{mx}", "role": "mx", "tls": "may", "auth": "off"},
        {"address": f"127.0.0.1:{submission}", "role": "submission", "tls": "required",
         "auth": "off"},
        {"address": f"127.0.0.1:{smtps}", "role": "submission", "tls": "implicit",
         "auth": "off"}],
        "tls": tls or CERT}
    if sink is not None:
        cfg.update(routes={"*": sink.route}, queue=SHORT_QUEUE)
    cfg.update(overrides)
    server = factory(**cfg)
    server.mx, server.submission, server.smtps = mx, submission, smtps
    return server


@pytest.fixture
def relay_sink():
    with Sink() as sink:
        yield sink


@pytest.fixture
def server(ringmx_factory, relay_sink):
    return tls_server(ringmx_factory, relay_sink)


def accepted_line(server, qid):
    (line,) = wait_until(lambda: [ln for ln in server.logtext().splitlines()
                                  if f"{qid} accepted " in ln], 10, f"{qid} accepted")
    return line


def assert_tls_delivery(server, sink, qid):
    """qid was accepted over TLS 1.2/1.3 and relayed with `with ESMTPS` in its Received."""
    line = accepted_line(server, qid)
    m = TLS_FIELD.search(line)
    assert m, f"no tls=VERSION/SUITE in: {line}"
    msg = wait_until(lambda: next((m for m in sink.accepted()
                                   if f"id {qid}".encode() in m.data[:400]), None),
                     15, f"{qid} relayed")
    received, _ = split_received(msg.data)
    assert re.search(rb"\bwith ESMTPS\b", received), received
    return m.group(1), m.group(2)


def implicit_tls(port, context=None, session=None, timeout=10.0):
    """A TLS connection to an implicit-TLS port (the handshake done)."""
    raw = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    return (context or tls_client_context()).wrap_socket(raw, server_hostname=NAME,
                                                         session=session)


def read_reply(sock):
    """One whole SMTP reply from a socket (plain or TLS), as text."""
    buf = b""
    while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", buf):
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError(f"closed after {buf!r}")
        buf += chunk
    return buf.decode(errors="replace")


def nothing_arrives(sock, seconds=1.0):
    """True when the peer sends nothing for that long (a close counts as something)."""
    sock.settimeout(seconds)
    try:
        sock.recv(65536)
        return False
    except (socket.timeout, ssl.SSLWantReadError):
        return True
    finally:
        sock.settimeout(10.0)


def still_serves(server):
    """A full message on the implicit port, from a new client: the server is fine."""
    assert server.proc.poll() is None, "ringmx died"
    with smtplib.SMTP_SSL("127.0.0.1", server.smtps, context=tls_client_context(),
                          timeout=10) as s:
        s.ehlo("next.example")
        s.sendmail("s@client.example", ["u@example.test"], BODY)


# ---- clients that deliver -----------------------------------------------------------------

def swaks(port, *args):
    return subprocess.run(
        ["swaks", "--server", "127.0.0.1", "--port", str(port), "--helo", "client.example",
         "--from", "s@client.example", "--to", "u@example.test", "--timeout", "10",
         "--tls-verify", "--tls-ca-path", tls_file("ca.pem"), *args],
        capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("listener,mode", [("mx", "--tls"), ("submission", "--tls"),
                                           ("smtps", "--tlsc")])
def test_swaks_delivers_over_tls(server, relay_sink, listener, mode):
    r = swaks(getattr(server, listener), mode)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "TLS started with cipher TLSv1.3" in r.stdout, r.stdout[-3000:]
    m = re.search(r"queued as ([0-9A-F]+)", r.stdout)
    assert m, r.stdout[-2000:]
    version, suite = assert_tls_delivery(server, relay_sink, m.group(1))
    assert version == "TLSv1.3", (version, suite)
    assert suite in r.stdout, "the log names another suite than the client saw"


def test_smtplib_starttls_on_mx(server, relay_sink):
    with smtp_client(server, port=server.mx) as s:
        s.ehlo("client.example")
        assert s.has_extn("starttls")
        code, _ = s.starttls(context=tls_client_context())
        assert code == 220
        s.ehlo("client.example")
        assert s.mail("s@client.example")[0] == 250
        assert s.rcpt("u@example.test")[0] == 250
        qid = queued_id(s.data(BODY))
    assert_tls_delivery(server, relay_sink, qid)


def test_plaintext_on_the_may_listener_is_marked(server, relay_sink):
    """STARTTLS is only offered on `may`: a client that ignores it still delivers, and the
    records say it came in clear (tls=none, `with ESMTP`)."""
    with smtp_client(server, port=server.mx) as s:
        s.ehlo("client.example")
        assert s.has_extn("starttls")
        assert s.mail("s@client.example")[0] == 250
        assert s.rcpt("u@example.test")[0] == 250
        qid = queued_id(s.data(BODY))
    assert re.search(r" tls=\"?none\b", accepted_line(server, qid))
    (msg,) = relay_sink.wait_accepted(1)
    received, _ = split_received(msg.data)
    assert re.search(rb"\bwith ESMTP\b", received) and b"ESMTPS" not in received, received


def test_smtplib_smtp_ssl_on_implicit_port(server, relay_sink):
    with smtplib.SMTP_SSL("127.0.0.1", server.smtps, context=tls_client_context(),
                          timeout=10) as s:
        s.ehlo("client.example")
        assert not s.has_extn("starttls"), "STARTTLS offered inside implicit TLS"
        assert s.mail("s@client.example")[0] == 250
        assert s.rcpt("u@example.test")[0] == 250
        qid = queued_id(s.data(BODY))
    assert_tls_delivery(server, relay_sink, qid)


def test_rsa_certificate_works_too(ringmx_factory, relay_sink):
    server = tls_server(ringmx_factory, relay_sink,
                        tls={"certificate": tls_file("rsa.pem"), "key": tls_file("rsa.key")})
    with implicit_tls(server.smtps) as s:
        assert read_reply(s).startswith("220 ")
        assert s.version() == "TLSv1.3"
        assert dict(x[0] for x in s.getpeercert()["subject"])["commonName"] == NAME


# ---- openssl s_client ---------------------------------------------------------------------

def s_client(port, *args, starttls=True, ign_eof=False):
    """openssl s_client verifying NAME; it sends QUIT, and with ign_eof reads to the close."""
    cmd = ["openssl", "s_client", *(["-ign_eof"] if ign_eof else []),
           "-connect", f"127.0.0.1:{port}", "-servername", NAME,
           "-CAfile", tls_file("ca.pem"), "-verify_return_error", "-verify_hostname", NAME,
           *(["-starttls", "smtp"] if starttls else []), *args]
    return subprocess.run(cmd, input=b"QUIT\r\n", capture_output=True, timeout=30)


@pytest.mark.parametrize("version,flag", [("TLSv1.3", "-tls1_3"), ("TLSv1.2", "-tls1_2")])
def test_openssl_starttls_handshake(server, version, flag):
    r = s_client(server.mx, flag)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out[-2000:] + r.stderr.decode(errors="replace")
    assert f"New, {version}, Cipher is " in out, out[-2000:]
    assert "Verify return code: 0 (ok)" in out
    assert "Peer signature type: ECDSA" in out  # the ECDSA fixture certificate


def test_openssl_implicit_tls_handshake(server):
    r = s_client(server.smtps, starttls=False, ign_eof=True)  # to read the greeting
    out = r.stdout.decode(errors="replace")
    assert "New, TLSv1.3, Cipher is " in out and "Verify return code: 0 (ok)" in out, out
    assert re.search(r"\n220 ", out), "no greeting inside TLS: " + out[-1000:]


@pytest.mark.parametrize("listener", ["mx", "smtps"])
def test_tls_1_1_refused(server, listener):
    # SECLEVEL=0: our OpenSSL really offers TLS 1.1, so the refusal is the server's
    r = s_client(getattr(server, listener), "-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0",
                 starttls=listener == "mx")
    out = r.stdout.decode(errors="replace")
    assert r.returncode != 0 and "Cipher is (NONE)" in out, out[-2000:]
    assert "New, TLSv1.1" not in out
    still_serves(server)


def test_sni_chooses_the_certificate(ringmx_factory):
    sni = {"other.ringmx.test": {"certificate": tls_file("other.pem"),
                                 "key": tls_file("other.key")}}
    server = tls_server(ringmx_factory, tls=dict(CERT, sni=sni))

    def subject(port, sni, starttls, expect):
        """The subject the server shows a client asking for sni (verified as expect)."""
        r = subprocess.run(["openssl", "s_client", "-connect", f"127.0.0.1:{port}",
                            "-servername", sni, "-CAfile", tls_file("ca.pem"),
                            "-verify_return_error", "-verify_hostname", expect,
                            *(["-starttls", "smtp"] if starttls else [])],
                           input=b"QUIT\r\n", capture_output=True, timeout=30)
        out = r.stdout.decode(errors="replace")
        assert "Verify return code: 0 (ok)" in out, out[-2000:]
        return re.search(r"^subject=(.*)$", out, re.M).group(1)

    for port, starttls in ((server.smtps, False), (server.mx, True)):
        other = "other.ringmx.test"
        assert subject(port, other, starttls, other).endswith(other)
        assert subject(port, NAME, starttls, NAME).endswith(NAME)
        # a name without a certificate of its own: the default one
        assert subject(port, "unknown.ringmx.test", starttls, NAME).endswith(NAME)
    # no SNI at all: the default certificate
    with socket.create_connection(("127.0.0.1", server.smtps), timeout=10) as raw:
        ctx = tls_client_context()
        ctx.check_hostname = False
        with ctx.wrap_socket(raw) as s:
            assert dict(x[0] for x in s.getpeercert()["subject"])["commonName"] == NAME


@pytest.mark.parametrize("listener", ["mx", "smtps"])
def test_quit_ends_tls_with_close_notify(server, listener):
    """RFC 8446 §6.1: the server ends the TLS session with close_notify before it closes the
    connection; a strict client (OpenSSL 3 without IGNORE_UNEXPECTED_EOF) sees a clean end."""
    ctx = tls_client_context()
    ctx.options &= ~ssl.OP_IGNORE_UNEXPECTED_EOF
    if listener == "smtps":
        s = implicit_tls(server.smtps, ctx)
        assert read_reply(s).startswith("220 ")
    else:
        raw = RawSmtp(server, port=server.mx)
        assert raw.reply()[0] == 220
        assert raw.cmd("EHLO client.example")[0] == 250
        assert raw.cmd("STARTTLS")[0] == 220
        s = raw.starttls(ctx)
    with s:
        s.sendall(b"QUIT\r\n")
        assert read_reply(s).startswith("221 ")
        assert s.recv(65536) == b""  # close_notify; an SSLError here: the TCP close alone


# ---- RFC 3207 semantics -------------------------------------------------------------------

def ehlo_keywords(text):
    return {line[4:].split()[0].upper() for line in text.splitlines()[1:] if len(line) > 4}


def test_starttls_forgets_the_session_and_is_not_offered_again(server):
    raw = RawSmtp(server, port=server.mx)
    assert raw.reply()[0] == 220
    code, text = raw.cmd("EHLO client.example")
    assert code == 250 and "STARTTLS" in ehlo_keywords(text), text
    assert raw.cmd("MAIL FROM:<before@client.example>")[0] == 250
    code, text = raw.cmd("STARTTLS")
    if code == 503:  # refused inside a transaction (as Postfix does): then after RSET
        assert "5.5.1" in text, text
        assert raw.cmd("RSET")[0] == 250
        code, text = raw.cmd("STARTTLS")
    assert code == 220, text
    raw.starttls(tls_client_context())
    # RFC 3207 §4.2: the client must EHLO again; what came before TLS is forgotten
    code, text = raw.cmd("MAIL FROM:<s@client.example>")
    assert code == 503 and "5.5.1" in text, text
    code, text = raw.cmd("EHLO client.example")
    assert code == 250 and "STARTTLS" not in ehlo_keywords(text), text
    code, text = raw.cmd("RCPT TO:<u@example.test>")  # the MAIL before STARTTLS is gone
    assert code == 503, text
    code, text = raw.cmd("STARTTLS")  # no second STARTTLS inside TLS
    assert code >= 500, text
    assert raw.cmd("MAIL FROM:<s@client.example>")[0] == 250
    assert raw.cmd("RCPT TO:<u@example.test>")[0] == 250
    raw.close()


def test_required_listener_refuses_mail_before_starttls(server):
    raw = RawSmtp(server, port=server.submission)
    assert raw.reply()[0] == 220
    code, text = raw.cmd("EHLO client.example")
    assert code == 250 and "STARTTLS" in ehlo_keywords(text), text
    code, text = raw.cmd("MAIL FROM:<s@client.example>")
    assert code == 530 and "5.7.0" in text, text
    assert raw.cmd("STARTTLS")[0] == 220
    raw.starttls(tls_client_context())
    assert raw.cmd("EHLO client.example")[0] == 250
    assert raw.cmd("MAIL FROM:<s@client.example>")[0] == 250
    raw.close()


@pytest.mark.parametrize("listener", ["mx", "submission"])
def test_starttls_injection_discarded(server, listener):
    """Bytes pipelined behind STARTTLS are never executed, before or after the handshake."""
    raw = RawSmtp(server, port=getattr(server, listener))
    assert raw.reply()[0] == 220
    assert raw.cmd("EHLO client.example")[0] == 250
    raw.send("STARTTLS\r\nRSET\r\n")  # one write: the RSET is the injection
    code, text = raw.reply()
    assert code == 220, text
    assert raw.buf == b"" and nothing_arrives(raw.sock, 0.5), "RSET answered in plaintext"
    tls = raw.starttls(tls_client_context())
    assert nothing_arrives(tls, 1.0), "RSET answered inside TLS"
    code, text = raw.cmd("EHLO client.example")
    assert code == 250 and text.splitlines()[0].startswith(f"250-{NAME}"), text
    raw.close()


# ---- bad clients --------------------------------------------------------------------------

def test_garbage_instead_of_client_hello(server):
    mark = len(server.logtext())
    with socket.create_connection(("127.0.0.1", server.smtps), timeout=10) as s:
        s.sendall(b"EHLO not-tls.example\r\n" + bytes(range(256)) * 4)
        s.settimeout(10)
        got = b""
        try:
            while (chunk := s.recv(65536)):
                got += chunk
        except ConnectionResetError:
            pass
    assert b"250" not in got, got  # no SMTP spoken in clear text on the implicit port
    new = wait_until(lambda: [ln for ln in server.logtext()[mark:].splitlines()
                              if re.search(r"tls|handshake", ln, re.I)], 10,
                     "a log line about the failed handshake")
    assert new
    still_serves(server)


class MemTls:
    """A TLS client over memory BIOs on a plain socket: a test decides which ciphertext
    bytes go out (half a ClientHello, half a record)."""

    def __init__(self, port, context=None):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.inc, self.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = (context or tls_client_context()).wrap_bio(self.inc, self.out,
                                                              server_hostname=NAME)

    def client_hello(self):
        try:
            self.tls.do_handshake()
        except ssl.SSLWantReadError:
            pass
        return self.out.read()

    def handshake(self):
        self.sock.sendall(self.client_hello())
        while True:
            self._feed()
            try:
                self.tls.do_handshake()
                break
            except ssl.SSLWantReadError:
                self.sock.sendall(self.out.read())
        self.sock.sendall(self.out.read())

    def _feed(self):
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("server closed")
        self.inc.write(data)

    def record(self, plaintext):
        self.tls.write(plaintext)
        return self.out.read()

    def reply(self):
        buf = b""
        while not re.search(rb"(^|\r\n)\d{3} [^\r\n]*\r\n$", buf):
            try:
                buf += self.tls.read(65536)
            except ssl.SSLWantReadError:
                self._feed()
        return buf.decode(errors="replace")

    def close(self):
        self.sock.close()


def test_close_in_the_middle_of_a_client_hello(server):
    t = MemTls(server.smtps)
    hello = t.client_hello()
    t.sock.sendall(hello[:len(hello) // 2])
    t.close()
    still_serves(server)


def test_record_split_and_cut(server):
    t = MemTls(server.smtps)
    t.handshake()
    assert t.reply().startswith("220 ")
    record = t.record(b"EHLO split.example\r\n")
    t.sock.sendall(record[:7])
    assert nothing_arrives(t.sock, 0.5), "answered half a record"
    t.sock.sendall(record[7:])
    assert t.reply().startswith(f"250-{NAME}")  # a record in two segments is one record
    cut = t.record(b"MAIL FROM:<s@client.example>\r\n")
    t.sock.sendall(cut[:len(cut) // 2])
    t.close()  # gone in the middle of a record
    still_serves(server)


def test_stalled_handshake_times_out(server, relay_sink):
    """A client that connects to the implicit port and says nothing holds no one up, gets
    nothing, and is dropped by the handshake timeout (fixed, TLS_HANDSHAKE_TIMEOUT_MS: 30 s;
    no config key sets it)."""
    stalled = socket.create_connection(("127.0.0.1", server.smtps), timeout=50)
    start = time.monotonic()
    for _ in range(3):
        still_serves(server)  # meanwhile the others are served
    relay_sink.wait_accepted(3)
    try:
        assert stalled.recv(65536) == b"", "sent something to a client that said nothing"
    except ConnectionResetError:
        pass
    took = time.monotonic() - start
    assert took < 45, f"stalled handshake held {took:.1f} s"
    stalled.close()
    still_serves(server)


# ---- resumption ---------------------------------------------------------------------------

def resumed_session(port, context, session):
    """One implicit-TLS session that reads the greeting and QUITs: (its session, reused?)."""
    with implicit_tls(port, context, session) as s:
        assert read_reply(s).startswith("220 ")  # also takes in the TLS 1.3 tickets
        s.sendall(b"QUIT\r\n")
        read_reply(s)
        return s.session, s.session_reused


def test_session_resumption_on_implicit_port_across_workers(server):
    """workers: 2 with SO_REUSEPORT: reconnections land on either worker, and every one of
    them resumes (the ticket key is the same in all workers)."""
    assert server.cfg["workers"] == 2
    ctx = tls_client_context()
    session, reused = resumed_session(server.smtps, ctx, None)
    assert not reused and session is not None
    results = []
    for _ in range(10):
        session, reused = resumed_session(server.smtps, ctx, session)
        results.append(reused)
    assert all(results), f"resumed {results.count(True)} of {len(results)}"


# ---- testssl.sh ---------------------------------------------------------------------------

def run_testssl(tmp_path, *target):
    exe = shutil.which("testssl") or shutil.which("testssl.sh")
    if exe is None:
        pytest.skip("testssl.sh is not installed (tools/install-deps.sh test)")
    out = tmp_path / f"testssl-{time.monotonic_ns()}.json"
    # protocols, cipher categories, forward secrecy, and every cipher one by one: ~20 s
    r = subprocess.run([exe, "--jsonfile", str(out), "--quiet", "--color", "0",
                        "--warnings", "batch", "--fast", "--nodns", "none",
                        "--connect-timeout", "5", "--openssl-timeout", "10",
                        "-p", "-s", "-f", "-e", *target],
                       capture_output=True, text=True, timeout=120)
    assert out.exists(), r.stdout[-2000:] + r.stderr[-2000:]
    with open(out) as f:
        return {e["id"]: e["finding"] for e in json.load(f)}


WEAK = re.compile(r"NULL|EXP|RC4|RC2|DES|IDEA|anon|ADH|AECDH|MD5|PSK|SRP", re.I)


def assert_strong_tls(found):
    for proto in ("SSLv2", "SSLv3", "TLS1", "TLS1_1"):
        assert found.get(proto, "").startswith("not offered"), (proto, found.get(proto))
    assert found.get("TLS1_2", "").startswith("offered"), found.get("TLS1_2")
    assert found.get("TLS1_3", "").startswith("offered"), found.get("TLS1_3")
    for cat in ("NULL", "aNULL", "EXPORT", "LOW", "3DES_IDEA"):
        assert found.get(f"cipherlist_{cat}", "").startswith("not offered"), (cat, found)
    # tls/tls.h: AEAD suites only, so no CBC ("obsolete") either
    assert found.get("cipherlist_AVERAGE", "").startswith("not offered"), found
    assert found.get("FS", found.get("PFS", "")).startswith("offered"), found
    ciphers = {k: v for k, v in found.items() if k.startswith("cipher_x")}
    assert ciphers, f"testssl listed no cipher: {found}"
    for key, line in ciphers.items():
        words = line.split()  # "xc02b  ECDHE-ECDSA-AES128-GCM-SHA256  ECDH 253  AESGCM ..."
        assert words[2] in ("ECDH", "DH"), f"not forward secret: {line}"
        assert not WEAK.search(words[1]), f"weak suite: {line}"


def test_testssl_implicit_port(server, tmp_path):
    assert_strong_tls(run_testssl(tmp_path, f"127.0.0.1:{server.smtps}"))


def test_testssl_starttls_mx_port(server, tmp_path):
    assert_strong_tls(run_testssl(tmp_path, "--starttls", "smtp", f"127.0.0.1:{server.mx}"))
