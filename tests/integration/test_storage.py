"""Out of storage: a full disk or the queue's memory limit gives 452 4.3.1, never a 250
that the server cannot keep; what was acknowledged survives a restart."""
import re
import smtplib
import subprocess
import threading

import pytest

BODY_LINE = "x" * 76 + "\r\n"


def body_of(size):
    return ("Subject: storage test\r\n\r\n" + BODY_LINE * (size // len(BODY_LINE))).encode()


def send_one(s, size):
    """One transaction; returns (code, reply text)."""
    s.ehlo_or_helo_if_needed()
    s.mail("a@sender.test")
    s.rcpt("user@example.test")
    return s.data(body_of(size))


@pytest.fixture
def small_fs(tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)],
                       capture_output=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs here: " + r.stderr.decode().strip())
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_disk_full_gives_452_and_keeps_acknowledged_mail(ringmx_factory, small_fs):
    server = ringmx_factory(spool_dir=str(small_fs / "spool"), workers=1,
                            queue={"segment_size": "64K"})
    acked, refused = [], None
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        for _ in range(40):
            code, text = send_one(s, 60000)
            if code == 250:
                acked.append(re.search(rb"queued as ([0-9A-F]{16})", text).group(1).decode())
                continue
            refused = (code, text.decode())
            s.rset()
            break
    assert refused is not None, "a 1 MB disk took 40 messages of 60 KB"
    assert refused[0] == 452 and refused[1].startswith("4.3.1"), refused
    assert acked, "nothing fitted at all"
    assert "journal" in server.logtext()

    queued = {m["id"] for m in server.queue()}
    assert queued == set(acked)
    server.kill9()
    server.start()
    assert {m["id"] for m in server.queue()} == set(acked)


def test_disk_full_with_concurrent_sessions_keeps_exactly_the_acknowledged(ringmx_factory,
                                                                          small_fs):
    """Many sessions finish messages while a journal batch is in flight when the disk
    fills: those of the failed batch and those queued behind it are refused, every 250
    survives a restart and nothing refused comes back."""
    server = ringmx_factory(spool_dir=str(small_fs / "spool"), workers=1,
                            queue={"segment_size": "64K"})
    acked, codes, lock = [], [], threading.Lock()

    def client():
        with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
            for _ in range(20):
                code, text = send_one(s, 20000)
                with lock:
                    codes.append(code)
                    if code == 250:
                        acked.append(re.search(rb"queued as ([0-9A-F]{16})", text)
                                     .group(1).decode())
                if code != 250:
                    s.rset()

    threads = [threading.Thread(target=client) for _ in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert acked and 452 in codes, codes
    assert set(codes) <= {250, 452}, codes
    assert {m["id"] for m in server.queue()} == set(acked)
    server.kill9()
    server.start()
    assert {m["id"] for m in server.queue()} == set(acked)


def test_memory_limit_gives_452(ringmx_factory):
    server = ringmx_factory(workers=1, queue={"memory_limit": "256K"})
    codes = []
    with smtplib.SMTP("127.0.0.1", server.port, timeout=30) as s:
        for _ in range(12):
            code, text = send_one(s, 40000)
            codes.append((code, text.decode()))
            if code != 250:
                s.rset()
    ok = [c for c in codes if c[0] == 250]
    refused = [c for c in codes if c[0] != 250]
    assert ok and refused, codes
    assert all(c[0] == 452 and c[1].startswith("4.3.1") for c in refused), refused
    # after the first refusal, nothing more is taken: the limit holds
    first = codes.index(refused[0])
    assert all(c[0] == 452 for c in codes[first:]), codes
    assert len(server.queue()) == len(ok)
    assert server.stats()["messages_refused"] == len(refused)
