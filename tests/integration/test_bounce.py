"""Bounces: a 5xx from the next hop or an expired message gives an RFC 3464 delivery status
notification, sent from <> to the envelope sender through the same route (so the recording
sink receives it and we parse it with Python's email package). A null sender gets none."""
import email
import email.policy
import threading

from conftest import wait_until
from sinks import Sink
from test_outbound import outcome_lines, relay_to, send, wait_empty

SENDER = "sender@client.example"
ORIGINAL = (b"From: sender@client.example\r\nTo: bad@example.test\r\n"
            b"Subject: doomed message\r\nMessage-ID: <doomed.1@client.example>\r\n\r\n"
            b"the body, not to be sent back with RET=HDRS\r\n")


def refuse(addresses, reply="550 5.1.1 no such user here"):
    """A RCPT policy refusing the given addresses with reply."""
    return lambda txn, address: reply if address in addresses else None


def dsns(sink):
    return [m for m in sink.accepted() if m.sender == ""]


def parse_dsn(msg):
    """(the whole report, [delivery-status field groups], the returned headers part)."""
    report = email.message_from_bytes(msg.data, policy=email.policy.compat32)
    assert report.get_content_type() == "multipart/report"
    assert report.get_param("report-type") == "delivery-status"
    parts = report.get_payload()
    assert parts[0].get_content_type() == "text/plain"
    (status,) = [p for p in parts if p.get_content_type() == "message/delivery-status"]
    groups = [dict(g.items()) for g in status.get_payload()]  # per-message, then per-rcpt
    returned = [p for p in parts if p.get_content_type() in ("text/rfc822-headers",
                                                              "message/rfc822")]
    assert len(returned) == 1, [p.get_content_type() for p in parts]
    return report, groups, returned[0]


def returned_text(part):
    payload = part.get_payload()
    if isinstance(payload, list):  # message/rfc822
        return payload[0].as_string()
    return payload


def test_550_bounces_to_sender(ringmx_factory):
    with Sink(rcpt_policy=refuse({"bad@example.test"})) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, ORIGINAL, sender=SENDER, rcpts=["bad@example.test"])
        (dsn,) = wait_until(lambda: dsns(sink), 15, "the DSN")
        wait_empty(server)

        assert dsn.rcpts == [SENDER]
        report, groups, returned = parse_dsn(dsn)
        assert report["From"].lower().startswith("mail delivery system <mailer-daemon@")
        assert report["To"] is None or SENDER in report["To"]
        per_message, per_rcpt = groups[0], groups[1:]
        assert per_message["Reporting-MTA"] == "dns; mx.ringmx.test"
        assert len(per_rcpt) == 1
        r = per_rcpt[0]
        assert r["Final-Recipient"] == "rfc822; bad@example.test"
        assert r["Action"] == "failed"
        assert r["Status"] == "5.1.1"
        assert r["Diagnostic-Code"].startswith("smtp; 550")
        assert "no such user here" in r["Diagnostic-Code"]
        assert "127.0.0.1" in r.get("Remote-MTA", ""), r
        text = returned_text(returned)
        assert "Subject: doomed message" in text
        assert "<doomed.1@client.example>" in text
        assert f"id {qid}" in text  # our Received: header is part of what we return
        assert "the body, not to be sent back" not in text
        human = report.get_payload()[0].get_payload(decode=True).decode()
        assert "bad@example.test" in human

        (line,) = outcome_lines(server, qid, "bounced")
        assert "code=550" in line and "dsn=5.1.1" in line
        assert f"{qid} bounce dsn_id=" in server.logtext()
        assert sink.accepted() == [dsn]  # the original itself went nowhere
        stats = server.stats()
        assert stats["rcpts_bounced"] == 1
        assert stats["rcpts_delivered"] == 1  # the DSN
        assert stats["queue_messages"] == 0


def test_expired_message_bounces_with_447(ringmx_factory):
    always_busy = refuse({"slow@example.test"}, "451 4.2.1 mailbox busy, try later")
    with Sink(rcpt_policy=always_busy) as sink:
        server = relay_to(ringmx_factory, sink, queue={"retry": ["1s"], "max_lifetime": "3s"})
        qid = send(server, ORIGINAL, sender=SENDER, rcpts=["slow@example.test"])
        wait_until(lambda: dsns(sink) or server.proc.poll() is not None, 20, "the expiry DSN")
        assert server.proc.poll() is None, "ringmx died"
        (dsn,) = dsns(sink)
        wait_empty(server)
        deferred = outcome_lines(server, qid, "deferred")
        assert len(deferred) >= 2, deferred  # tried on the retry schedule until the lifetime
        (bounced,) = outcome_lines(server, qid, "bounced")
        assert "4.4.7" in bounced

        _, groups, _ = parse_dsn(dsn)
        (r,) = groups[1:]
        assert r["Final-Recipient"] == "rfc822; slow@example.test"
        assert r["Action"] == "failed"
        assert r["Status"] == "4.4.7"
        assert "mailbox busy" in r["Diagnostic-Code"]  # the last reply is kept
        assert dsn.rcpts == [SENDER]


def test_null_sender_is_never_bounced(ringmx_factory):
    with Sink(rcpt_policy=refuse({"bad@example.test"})) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, ORIGINAL, sender="", rcpts=["bad@example.test"])
        wait_until(lambda: outcome_lines(server, qid, "bounced"), 15, "the bounce")
        wait_empty(server)
        threading.Event().wait(1.0)  # a DSN, if one were made, would be on its way
        assert sink.accepted() == []
        log = server.logtext()
        assert f"{qid} double-bounce" in log
        assert f"{qid} bounce " not in log
        assert server.stats()["rcpts_bounced"] == 1


def test_dsn_only_for_failed_recipients(ringmx_factory):
    with Sink(rcpt_policy=refuse({"bad@example.test"}, "550 5.7.1 rejected by policy")) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, ORIGINAL, sender=SENDER,
                   rcpts=["good@example.test", "bad@example.test"])
        (dsn,) = wait_until(lambda: dsns(sink), 15, "the DSN")
        wait_empty(server)
        originals = [m for m in sink.accepted() if m.sender == SENDER]
        assert [m.rcpts for m in originals] == [["good@example.test"]]

        _, groups, _ = parse_dsn(dsn)
        (r,) = groups[1:]
        assert r["Final-Recipient"] == "rfc822; bad@example.test"
        assert r["Status"] == "5.7.1"
        assert "rejected by policy" in r["Diagnostic-Code"]
        assert "good@example.test" not in dsn.data.decode(errors="replace").split(
            "message/delivery-status", 1)[1].split("text/rfc822-headers")[0]
        assert len(outcome_lines(server, qid, "delivered")) == 1
        assert len(outcome_lines(server, qid, "bounced")) == 1


def test_bounce_of_a_bounce_is_dropped(ringmx_factory):
    """The sender's own address refuses the DSN as well: logged, not looped."""
    with Sink(rcpt_policy=refuse({"bad@example.test", SENDER})) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, ORIGINAL, sender=SENDER, rcpts=["bad@example.test"])
        wait_until(lambda: "double-bounce" in server.logtext(), 15, "the double bounce")
        wait_empty(server)
        assert sink.accepted() == []
        assert f"{qid} bounce dsn_id=" in server.logtext()
        assert server.stats()["rcpts_bounced"] == 2
