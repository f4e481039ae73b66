"""Inbound SMTP end to end: envelope and bytes as queued, ESMTP extensions, smuggling, errors."""
import re
import subprocess
import threading

import pytest

from conftest import RawSmtp, show_message, smtp_client

QUEUED = re.compile(r"2\.0\.0 Ok: queued as ([0-9A-F]+)$")


def queued_id(reply):
    """The queue id out of a 250 reply to DATA, given as (code, bytes) or text."""
    code, text = reply if isinstance(reply, tuple) else (250, reply)
    text = text.decode() if isinstance(text, bytes) else text
    assert code == 250, (code, text)
    m = QUEUED.search(text)
    assert m, text
    return m.group(1)


def open_transaction(raw, rcpt="u@example.test"):
    assert raw.reply()[0] == 220
    assert raw.cmd("EHLO client.example")[0] == 250
    assert raw.cmd("MAIL FROM:<a@client.example>")[0] == 250
    assert raw.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
    code, text = raw.cmd("DATA")
    assert code == 354, text


def test_message_queued_with_exact_envelope_and_bytes(ringmx):
    body = (b"From: a@client.example\r\nSubject: exact\r\n\r\n"
            b".leading dot\r\n..two dots\r\n.\tdot tab\r\ncaf\xc3\xa9 8bit\r\nlast line\r\n")
    with smtp_client(ringmx) as s:
        assert s.ehlo("client.example")[0] == 250
        assert s.mail("Sender.Name@Client.Example", ["SIZE=1234", "BODY=8BITMIME"])[0] == 250
        assert s.rcpt("first@example.test")[0] == 250
        assert s.rcpt("Second@EXAMPLE.test")[0] == 250
        qid = queued_id(s.data(body))

    queue = ringmx.queue()
    assert [m["id"] for m in queue] == [qid]
    m = queue[0]
    assert m["sender"] == "Sender.Name@Client.Example"
    assert m["sender_params"] == "SIZE=1234 BODY=8BITMIME"
    assert [(r["address"], r["params"], r["state"]) for r in m["recipients"]] == [
        ("first@example.test", "", "pending"), ("Second@EXAMPLE.test", "", "pending")]
    assert m["client"]["addr"] == "127.0.0.1"
    assert m["client"]["helo"] == "client.example"
    assert m["client"]["protocol"] == "ESMTP"

    envelope, received, stored = show_message(ringmx, qid)
    assert envelope.startswith(qid + " ")
    assert stored == body  # dot-unstuffed by us exactly as smtplib stuffed it
    assert received.startswith("Received: from client.example ")
    assert f"id {qid}" in received
    assert "[127.0.0.1]" in received
    assert "with ESMTP" in received
    assert m["size"] == len(received) + len(body)


def test_helo_session_is_plain_smtp(ringmx):
    with smtp_client(ringmx) as s:
        assert s.helo("old.example")[0] == 250
        assert s.mail("a@old.example")[0] == 250
        assert s.rcpt("u@example.test")[0] == 250
        qid = queued_id(s.data(b"Subject: helo\r\n\r\nhi\r\n"))
    (m,) = ringmx.queue()
    assert (m["id"], m["sender_params"], m["client"]["protocol"]) == (qid, "", "SMTP")
    _, received, _ = show_message(ringmx, qid)
    assert "with SMTP id " + qid in received


def test_dot_unstuffing_raw(ringmx):
    raw = RawSmtp(ringmx)
    open_transaction(raw)
    raw.send(b"Subject: dots\r\n\r\n..\r\n...\r\n..x\r\nx.\r\n. \r\n.\r\n")
    qid = queued_id(raw.reply())
    assert raw.cmd("QUIT")[0] == 221
    _, _, stored = show_message(ringmx, qid)
    assert stored == b"Subject: dots\r\n\r\n.\r\n..\r\n.x\r\nx.\r\n \r\n"


def test_ehlo_advertises_extensions(ringmx):
    with smtp_client(ringmx) as s:
        code, text = s.ehlo("client.example")
        assert code == 250
        lines = text.decode().split("\n")
        assert lines[0] == "mx.ringmx.test"
        keywords = {line.split()[0] for line in lines[1:]}
        assert {"PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES", "DSN",
                "SMTPUTF8"} <= keywords
        assert s.has_extn("size") and int(s.esmtp_features["size"]) == 36700160


def test_dsn_parameters_queued(ringmx):
    """RFC 3461 parameters are validated and stored in one spelling for the relay."""
    with smtp_client(ringmx) as s:
        assert s.ehlo("client.example")[0] == 250
        assert s.has_extn("dsn")
        assert s.mail("a@client.example", ["ret=hdrs", "ENVID=QQ+2B1"])[0] == 250
        orcpt = "ORCPT=rfc822;r1@example.test"
        assert s.rcpt("r1@example.test", ["NOTIFY=success,delay", orcpt])[0] == 250
        assert s.rcpt("r2@example.test", ["NOTIFY=NEVER,SUCCESS"])[0] == 501
        assert s.rcpt("r2@example.test", ["ORCPT=rfc822;r2+2b@example.test"])[0] == 501
        assert s.rcpt("r2@example.test", ["notify=never"])[0] == 250
        qid = queued_id(s.data(b"Subject: dsn\r\n\r\nx\r\n"))
    m = next(m for m in ringmx.queue() if m["id"] == qid)
    assert m["sender_params"] == "RET=HDRS ENVID=QQ+2B1"
    assert [(r["address"], r["params"]) for r in m["recipients"]] == [
        ("r1@example.test", "NOTIFY=SUCCESS,DELAY ORCPT=rfc822;r1@example.test"),
        ("r2@example.test", "NOTIFY=NEVER")]


def test_banner_and_greeting_name(ringmx):
    raw = RawSmtp(ringmx)
    code, text = raw.reply()
    assert code == 220 and text.startswith("220 mx.ringmx.test ")
    assert raw.cmd("QUIT")[0] == 221
    assert raw.closed()


def test_swaks_pipelining(ringmx):
    r = subprocess.run(
        ["/usr/bin/swaks", "--server", f"127.0.0.1:{ringmx.port}", "--pipeline",
         "--ehlo", "swaks.example", "--from", "s@swaks.example", "--to",
         "one@example.test,two@example.test", "--header", "Subject: swaks pipelined",
         "--body", "pipelined body", "--timeout", "10"],
        capture_output=True, timeout=30)
    out = r.stdout.decode(errors="replace")
    assert r.returncode == 0, out + r.stderr.decode(errors="replace")
    assert out.index(" -> DATA") < out.index("<-  250 2.1.0"), "swaks did not pipeline"
    found = re.search(r"<- +250 (2\.0\.0 Ok: queued as [0-9A-F]+)", out)
    assert found, out
    qid = queued_id(found.group(1))
    (m,) = ringmx.queue()
    assert m["id"] == qid
    assert [r["address"] for r in m["recipients"]] == ["one@example.test", "two@example.test"]
    assert m["client"]["helo"] == "swaks.example"
    _, _, stored = show_message(ringmx, qid)
    assert b"Subject: swaks pipelined\r\n" in stored and b"pipelined body" in stored


def test_pipelined_batch_gets_all_replies(ringmx):
    raw = RawSmtp(ringmx)
    assert raw.reply()[0] == 220
    assert raw.cmd("EHLO client.example")[0] == 250
    raw.send("MAIL FROM:<a@client.example>\r\nRCPT TO:<x@example.test>\r\n"
             "RCPT TO:<y@other.example>\r\nRCPT TO:<z@example.test>\r\nDATA\r\n")
    assert [raw.reply()[0] for _ in range(5)] == [250, 250, 250, 250, 354]
    raw.send("Subject: p\r\n\r\nbody\r\n.\r\nNOOP\r\nQUIT\r\n")
    qid = queued_id(raw.reply())
    assert raw.reply()[0] == 250
    assert raw.reply()[0] == 221
    (m,) = ringmx.queue()
    assert m["id"] == qid
    assert [r["address"] for r in m["recipients"]] == [
        "x@example.test", "y@other.example", "z@example.test"]


def test_smtputf8_address_accepted(ringmx):
    with smtp_client(ringmx) as s:
        s.ehlo("client.example")
        assert s.mail("jösé@client.example", ["SMTPUTF8"])[0] == 250
        assert s.rcpt("ünïcödé@example.test")[0] == 250
        qid = queued_id(s.data("Subject: utf8\r\n\r\nüñí\r\n".encode()))
    (m,) = ringmx.queue()
    assert m["id"] == qid
    assert m["sender"] == "jösé@client.example"
    assert m["recipients"][0]["address"] == "ünïcödé@example.test"


def test_utf8_address_without_smtputf8_refused(ringmx):
    raw = RawSmtp(ringmx)
    assert raw.reply()[0] == 220
    assert raw.cmd("EHLO client.example")[0] == 250
    code, text = raw.cmd("MAIL FROM:<jösé@client.example>")
    assert code == 553 and " 5.6.7 " in text
    assert raw.cmd("QUIT")[0] == 221
    assert ringmx.queue() == []


SMUGGLES = ["\n.\n", "\r\n.\n", "\n.\r\n", "\r.\r\n", "\r\n.\r"]


def smuggle(raw, sep):
    open_transaction(raw, "first@example.test")
    raw.send(("Subject: outer\r\n\r\nouter body" + sep
              + "MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.test>\r\n"
              "DATA\r\nSubject: smuggled\r\n\r\nsmuggled body\r\n.\r\n").encode())


@pytest.mark.parametrize("sep", SMUGGLES, ids=repr)
def test_smuggling_yields_one_message(ringmx, sep):
    raw = RawSmtp(ringmx)
    smuggle(raw, sep)
    qid = queued_id(raw.reply())
    code, text = raw.cmd("QUIT")
    assert code == 221, f"a second reply came first: {text}"
    (m,) = ringmx.queue()
    assert m["id"] == qid
    assert m["sender"] == "a@client.example"
    assert [r["address"] for r in m["recipients"]] == ["first@example.test"]
    _, _, stored = show_message(ringmx, qid)
    assert b"MAIL FROM:<evil@attacker.example>\r\nRCPT TO:<victim@example.test>\r\n" in stored
    assert stored.endswith(b"smuggled body\r\n")


@pytest.mark.parametrize("sep", SMUGGLES, ids=repr)
def test_smuggling_rejected_in_reject_mode(ringmx_factory, sep):
    server = ringmx_factory(limits={"bare_newline": "reject"})
    raw = RawSmtp(server)
    smuggle(raw, sep)
    code, text = raw.reply()
    assert code == 550 and " 5.5.2 " in text, text
    assert raw.cmd("QUIT")[0] == 221
    assert server.queue() == []


def test_bare_newline_reject_mode_takes_clean_mail(ringmx_factory):
    server = ringmx_factory(limits={"bare_newline": "reject"})
    with smtp_client(server) as s:
        s.ehlo("client.example")
        assert s.mail("a@client.example")[0] == 250
        assert s.rcpt("u@example.test")[0] == 250
        qid = queued_id(s.data(b"Subject: ok\r\n\r\nok\r\n"))
    assert [m["id"] for m in server.queue()] == [qid]


@pytest.mark.parametrize("line,code,enh", [
    ("FROBNICATE", 500, "5.5.2"),
    ("X" * 600, 500, "5.5.2"),
    ("MAIL FROM:<a@client.example", 501, "5.5.4"),
    ("MAIL TO:<a@client.example>", 501, "5.5.4"),
    ("MAIL FROM:<a@client.example> FOO=BAR", 555, "5.5.4"),
    ("RCPT TO:<u@example.test>", 503, "5.5.1"),
    ("DATA", 503, "5.5.1"),
    ("EHLO", 501, "5.5.4"),
    ("NOOP", 250, "2.0.0"),
    ("RSET", 250, "2.0.0"),
    ("VRFY someone", 252, "2.5.2"),
    ("HELP", 214, "2.0.0"),
], ids=lambda v: v if isinstance(v, str) and len(v) < 40 else None)
def test_command_replies(ringmx, line, code, enh):
    raw = RawSmtp(ringmx)
    assert raw.reply()[0] == 220
    assert raw.cmd("EHLO client.example")[0] == 250
    got, text = raw.cmd(line)
    assert (got, text[4:4 + len(enh)]) == (code, enh), text
    assert raw.cmd("NOOP")[0] == 250  # the session goes on
    assert raw.cmd("QUIT")[0] == 221


def test_commands_before_ehlo_and_sequence(ringmx):
    raw = RawSmtp(ringmx)
    assert raw.reply()[0] == 220
    code, text = raw.cmd("MAIL FROM:<a@client.example>")
    assert code == 503 and " 5.5.1 " in text
    assert raw.cmd("ehlo client.example")[0] == 250  # commands are case-insensitive
    assert raw.cmd("mail from:<a@client.example>")[0] == 250
    code, text = raw.cmd("MAIL FROM:<b@client.example>")
    assert code == 503 and " 5.5.1 " in text
    code, text = raw.cmd("DATA")
    assert code in (503, 554) and " 5.5.1 " in text
    code, text = raw.cmd("RCPT TO:<a@b@example.test>")
    assert code == 501 and text[4:6] == "5.", text
    assert raw.cmd("RSET")[0] == 250
    code, text = raw.cmd("RCPT TO:<u@example.test>")
    assert code == 503 and " 5.5.1 " in text
    assert raw.cmd("QUIT")[0] == 221
    assert ringmx.queue() == []


def test_postmaster_accepted_from_untrusted_client(ringmx):
    with smtp_client(ringmx, source="127.0.0.2") as s:
        s.ehlo("stranger.example")
        assert s.mail("a@stranger.example")[0] == 250
        assert s.rcpt("postmaster")[0] == 250
        assert s.rcpt("PostMaster")[0] == 250
        assert s.rcpt("postmaster@example.test")[0] == 250
        code, text = s.rcpt("postmaster@other.example")
        assert code == 554 and text.startswith(b"5.7.1"), text
        qid = queued_id(s.data(b"Subject: to postmaster\r\n\r\nhello\r\n"))
    (m,) = ringmx.queue()
    assert m["id"] == qid
    assert m["client"]["addr"] == "127.0.0.2"
    assert [r["address"] for r in m["recipients"]] == [
        "postmaster", "PostMaster", "postmaster@example.test"]


def test_200_concurrent_clients(ringmx_factory):
    clients, per_client = 200, 3
    server = ringmx_factory(limits={"max_connections_per_ip": 1000})
    barrier = threading.Barrier(clients, timeout=60)
    ids, errors = [], []
    lock = threading.Lock()

    def client(n):
        try:
            with smtp_client(server, timeout=60) as s:
                s.ehlo(f"c{n}.example")
                barrier.wait()  # every session is open at the same time
                mine = []
                for k in range(per_client):
                    assert s.mail(f"c{n}@client.example")[0] == 250
                    assert s.rcpt(f"u{n}.{k}@example.test")[0] == 250
                    mine.append(queued_id(s.data(f"Subject: {n}.{k}\r\n\r\n{n}.{k}\r\n".encode())))
            with lock:
                ids.extend(mine)
        except Exception as e:  # reported below with every other failure
            with lock:
                errors.append(f"client {n}: {e!r}")
            barrier.abort()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not any(t.is_alive() for t in threads), "clients still running"
    assert errors == []
    assert len(ids) == clients * per_client
    assert len(set(ids)) == len(ids), "a queue id was given twice"
    queue = server.queue()
    assert sorted(m["id"] for m in queue) == sorted(ids)
    assert {m["recipients"][0]["address"] for m in queue} == {
        f"u{n}.{k}@example.test" for n in range(clients) for k in range(per_client)}
    assert server.stats()["messages_accepted"] == len(ids)
