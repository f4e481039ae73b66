"""TLS with a real peer: a private Postfix (postfix_mta.py) on loopback, both ways.

- ringmx → Postfix: Postfix's smtpd offers STARTTLS with the ECDSA fixture certificate;
  ringmx (`outbound.tls: encrypt`) relays to it, and Postfix's log shows the TLS connection
  from ringmx. Postfix relays on to the recording sink.
- Postfix → ringmx: Postfix's smtp client with `smtp_tls_security_level = encrypt` relays to
  ringmx's mx listener (`tls: may`); ringmx's accepted line has `tls=TLSv1.x/SUITE` and its
  Received header says `with ESMTPS`.
"""
import os
import re
import shutil
import smtplib

from conftest import tls_file, wait_until
from sinks import Sink
from test_outbound import SHORT_QUEUE, outcome_lines, send
from test_tls_inbound import accepted_line, assert_tls_delivery, tls_server
from test_tls_outbound import BODY, tls_field


def postfix_tls_files(tmp_path):
    """The fixture pair copied where Postfix (reading it as root) finds it, key mode 0600."""
    d = tmp_path / "postfix-tls"
    d.mkdir(exist_ok=True)
    for name in ("ecdsa.pem", "ecdsa.key", "ca.pem"):
        shutil.copy(tls_file(name), d / name)
    os.chmod(d / "ecdsa.key", 0o600)
    return {n: str(d / n) for n in ("ecdsa.pem", "ecdsa.key", "ca.pem")}


def test_ringmx_relays_into_postfix_over_tls(ringmx_factory, postfix_factory, tmp_path):
    files = postfix_tls_files(tmp_path)
    with Sink() as sink:
        mta = postfix_factory("example.test", sink.port, main_cf={
            "smtpd_tls_security_level": "may",
            "smtpd_tls_cert_file": files["ecdsa.pem"],
            "smtpd_tls_key_file": files["ecdsa.key"],
            "smtpd_tls_loglevel": "1",
            "smtpd_tls_received_header": "yes"})
        server = ringmx_factory(routes={"*": f"[127.0.0.1]:{mta.port}"}, queue=SHORT_QUEUE,
                                outbound={"tls": "encrypt"})
        qid = send(server, BODY)
        (line,) = wait_until(lambda: outcome_lines(server, qid, "delivered"), 20,
                             "delivered to Postfix")
        assert tls_field(line) == "anonymous", line
        (msg,) = sink.wait_accepted(1, timeout=30)  # Postfix relayed it on
        assert f"id {qid}".encode() in msg.data
        log = mta.log()
        assert re.search(r"TLS connection established from \S*\[127\.0\.0\.1\]: TLSv1\.[23] ",
                         log), log[-3000:]
        # Postfix's own Received header says the hop from ringmx was encrypted
        assert re.search(rb"\(using TLSv1\.[23] with cipher ", msg.data), msg.data[:1500]


def test_postfix_relays_into_ringmx_with_tls_encrypt(ringmx_factory, postfix_factory):
    with Sink() as sink:
        server = tls_server(ringmx_factory, sink)
        mta = postfix_factory("example.test", server.mx, main_cf={
            "smtp_tls_security_level": "encrypt",
            "smtp_tls_loglevel": "1"})
        with smtplib.SMTP("127.0.0.1", mta.port, timeout=10) as s:
            s.sendmail("s@client.example", ["u@example.test"], BODY)
        (msg,) = sink.wait_accepted(1, timeout=30)
        qid = re.search(rb"\(ringmx\) with \S+ id ([0-9A-F]+)", msg.data).group(1).decode()
        version, _ = assert_tls_delivery(server, sink, qid)
        assert version in ("TLSv1.2", "TLSv1.3")
        assert "helo=postfix.ringmx.test" in accepted_line(server, qid)
        assert re.search(r"TLS connection established to 127\.0\.0\.1\[127\.0\.0\.1\]:\d+: "
                         r"TLSv1\.[23] ", mta.log()), mta.log()[-3000:]

