"""Prometheus metrics on metrics.listen, from the same counters as `ringmxctl stats`."""
import socket
import subprocess
import urllib.error
import urllib.request

from conftest import binary, free_port, smtp_client


def scrape(port, path="/metrics"):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as r:
        return r.status, r.headers.get("Content-Type"), r.read().decode()


def samples(text):
    out = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.split()
            out[name] = int(value)
    return out


def test_metrics_count_what_happened(ringmx_factory):
    port = free_port()
    server = ringmx_factory(metrics={"listen": f"127.0.0.1:{port}"})
    before = samples(scrape(port)[2])
    assert before["ringmx_messages_accepted_total"] == 0
    with smtp_client(server) as s:
        s.sendmail("a@client.example", ["u@example.test"], b"Subject: m\r\n\r\nm\r\n")
        code, _ = s.rcpt("x@elsewhere.example")
    status, ctype, text = scrape(port)
    assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
    assert "# TYPE ringmx_messages_accepted_total counter" in text
    assert "# TYPE ringmx_queue_messages gauge" in text
    now = samples(text)
    assert now["ringmx_messages_accepted_total"] == 1
    assert now["ringmx_queue_messages"] == 1
    assert "ringmx_connections_total_total" not in now  # a counter's name is not doubled
    assert now["ringmx_connections_total"] >= 1
    # the same figures as the control socket
    stats = server.stats()
    assert stats["messages_accepted"] == now["ringmx_messages_accepted_total"]
    assert stats["queue_messages"] == now["ringmx_queue_messages"]


def test_metrics_other_paths_and_garbage(ringmx_factory):
    port = free_port()
    server = ringmx_factory(metrics={"listen": f"127.0.0.1:{port}"})
    try:
        scrape(port, "/")
        raise AssertionError("/ must not be served")
    except urllib.error.HTTPError as e:
        assert e.code == 404
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"\x00garbage" * 1000)  # past the bounded request head
        assert s.recv(64).startswith(b"HTTP/1.0 404")
    # the server is unharmed and still counts
    assert samples(scrape(port)[2])["ringmx_messages_accepted_total"] == 0
    assert server.stats()["messages_accepted"] == 0


def test_metrics_port_taken_is_a_clear_start_error(ringmx_factory):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        server = ringmx_factory(start=False, metrics={"listen": f"127.0.0.1:{port}"})
        r = subprocess.run([binary("ringmx"), "-c", server.cfg_path], capture_output=True,
                           timeout=30)
    assert r.returncode != 0
    assert f"metrics.listen 127.0.0.1:{port}" in r.stderr.decode(), r.stderr
