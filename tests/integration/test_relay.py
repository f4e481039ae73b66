"""Never an open relay: the classic relay test list from an untrusted source address."""
import pytest

from conftest import RawSmtp, smtp_client
from test_smtp import queued_id

UNTRUSTED = "127.0.0.2"  # the fixture's mynetworks is 127.0.0.1/32 only

# Each must be refused from an untrusted client: 554 5.7.1, or a syntax error (501).
RELAY_ATTEMPTS = [
    "user@other.example",
    "USER@OTHER.EXAMPLE",
    "user@other.example.",
    "user%other.example@example.test",
    "USER%OTHER.EXAMPLE@EXAMPLE.TEST",
    "user%other.example@example.test.",
    '"user@other.example"@example.test',
    '"user%other.example"@example.test',
    '"user!other.example"@example.test',
    "other.example!user@example.test",
    "other.example!user%example.test@example.test",
    "@example.test:user@other.example",
    "@example.test,@example.test:user@other.example",
    "@other.example:user@example.test",
    "user@other.example@example.test",
    "user@example.test@other.example",
    "user@[127.0.0.1]",
    "user@[127.0.0.2]",
    "user@[IPv6:::1]",
    "user%other.example@[127.0.0.1]",
    '"user@other.example"@[127.0.0.1]',
    "user@localhost",
    "user@sub.example.test",
    "user@example.test.other.example",
    "user@example.testx",
    "user@xexample.test",
    "postmaster@other.example",
    "user",
    "other.example!user",
    "user%other.example",
    '"user@other.example"',
]

ACCEPTED_FROM_ANYONE = [
    "user@example.test",
    "User.Name@EXAMPLE.TEST",
    "user@example.test.",
    '"quoted user"@example.test',
    "postmaster",
    "postmaster@example.test",
]


def rcpt_replies(server, source, addresses):
    """{address: (code, text)} for RCPT TO:<address> in one transaction; then DATA's reply."""
    raw = RawSmtp(server, source=source)
    assert raw.reply()[0] == 220
    assert raw.cmd("EHLO probe.example")[0] == 250
    assert raw.cmd("MAIL FROM:<probe@probe.example>")[0] == 250
    replies = {a: raw.cmd(f"RCPT TO:<{a}>") for a in addresses}
    data = raw.cmd("DATA")
    if data[0] == 354:
        data = raw.cmd("Subject: relay probe\r\n\r\nprobe\r\n.")
    raw.cmd("QUIT")
    raw.close()
    return replies, data


def test_relay_attempts_refused_from_untrusted(ringmx_factory):
    server = ringmx_factory(limits={"max_errors": 1000})
    replies, data = rcpt_replies(server, UNTRUSTED, RELAY_ATTEMPTS)
    accepted = {a: r for a, r in replies.items() if r[0] < 400}
    assert accepted == {}, "OPEN RELAY"
    wrong = {a: r for a, r in replies.items()
             if not (r[0] == 554 and r[1].startswith("554 5.7.1")) and r[0] != 501}
    assert wrong == {}, "expected 554 5.7.1 (or a 501 syntax error)"
    assert data[0] in (503, 554), data
    assert server.queue() == []

    log = server.logtext()
    assert "reject client=127.0.0.2 rcpt=user@other.example" in log
    rejects = [line for line in log.splitlines() if " reject " in line]
    assert len(rejects) == sum(1 for r in replies.values() if r[0] == 554)
    assert all("reply=" in line and "5.7.1" in line for line in rejects)
    assert any("Sender-specified routing" in line for line in rejects)
    assert any("Relay access denied" in line for line in rejects)


def test_local_domain_accepted_from_untrusted(ringmx):
    replies, data = rcpt_replies(ringmx, UNTRUSTED, ACCEPTED_FROM_ANYONE)
    assert {a: r[0] for a, r in replies.items()} == {a: 250 for a in ACCEPTED_FROM_ANYONE}
    qid = queued_id(data)
    (m,) = ringmx.queue()
    assert m["id"] == qid and m["client"]["addr"] == UNTRUSTED
    assert len(m["recipients"]) == len(ACCEPTED_FROM_ANYONE)


def test_trusted_network_may_relay(ringmx):
    with smtp_client(ringmx, source="127.0.0.1") as s:
        s.ehlo("inside.example")
        assert s.mail("app@inside.example")[0] == 250
        assert s.rcpt("user@other.example")[0] == 250
        assert s.rcpt("user@[127.0.0.1]")[0] == 250
        qid = queued_id(s.data(b"Subject: relayed\r\n\r\nout\r\n"))
    (m,) = ringmx.queue()
    assert m["id"] == qid
    assert [r["address"] for r in m["recipients"]] == ["user@other.example", "user@[127.0.0.1]"]


def test_untrusted_mix_keeps_only_local_recipients(ringmx):
    with smtp_client(ringmx, source=UNTRUSTED) as s:
        s.ehlo("outside.example")
        assert s.mail("a@outside.example")[0] == 250
        assert s.rcpt("local@example.test")[0] == 250
        code, text = s.rcpt("far@other.example")
        assert code == 554 and text.startswith(b"5.7.1"), text
        qid = queued_id(s.data(b"Subject: mixed\r\n\r\nmixed\r\n"))
    (m,) = ringmx.queue()
    assert m["id"] == qid
    assert [r["address"] for r in m["recipients"]] == ["local@example.test"]


@pytest.fixture
def mapped(ringmx_factory, tmp_path):
    path = tmp_path / "recipients"
    path.write_text("# known recipients\nknown@example.test\n@other.test\n")
    return ringmx_factory(recipient_map=str(path), relay_domains=["example.test", "other.test"])


@pytest.mark.parametrize("source", ["127.0.0.1", UNTRUSTED])
def test_recipient_map(mapped, source):
    cases = {
        "known@example.test": 250,
        "KNOWN@EXAMPLE.TEST": 250,
        "anyone@other.test": 250,
        "postmaster@example.test": 250,
        "unknown@example.test": 550,
        "known2@example.test": 550,
    }
    replies, data = rcpt_replies(mapped, source, cases)
    assert {a: r[0] for a, r in replies.items()} == cases
    assert all(r[1].startswith("550 5.1.1") for r in replies.values() if r[0] == 550)
    qid = queued_id(data)
    (m,) = mapped.queue()
    assert m["id"] == qid
    assert len(m["recipients"]) == 4
    log = mapped.logtext()
    assert f"reject client={source} rcpt=unknown@example.test" in log
    assert "5.1.1" in [line for line in log.splitlines() if "rcpt=unknown@" in line][0]
