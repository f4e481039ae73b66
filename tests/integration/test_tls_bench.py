"""TLS under load with the project's own tools, as a benchmark user runs them: ringmx-bench
send --starttls (port 25 style) and --tls (port 465 style) with a new connection and
handshake for every message, into ringmx, which relays (outbound.tls: may) to ringmx-bench
sink --tls; every message arrives, each over TLS (the sink's --record line names the TLS
version of the session that carried it)."""
import json
import re

import pytest

from benchlib import run_send
from conftest import tls_file, wait_until
from test_bench import procs, start_sink  # noqa: F401 (procs: the fixture)
from test_tls_inbound import TLS_FIELD, tls_server

N = 200


@pytest.mark.parametrize("listener,flag", [("mx", "--starttls"), ("smtps", "--tls")])
def test_bench_handshake_per_message_relayed_over_tls(ringmx_factory, procs, tmp_path,
                                                      listener, flag):
    record = tmp_path / "record.tsv"
    pair = f"{tls_file('ecdsa.pem')},{tls_file('ecdsa.key')}"
    sink_port, sink = start_sink(procs, "--tls", pair, "--expect", str(N), "--record",
                                 str(record), "--json")
    server = tls_server(ringmx_factory, routes={"*": f"[127.0.0.1]:{sink_port}"},
                        queue={"retry": ["1s"], "max_lifetime": "60s"},
                        outbound={"tls": "may"})
    rc, rep, err = run_send(getattr(server, listener), flag, "--connections", "8",
                            "--messages", str(N), "--messages-per-connection", "1",
                            "--size", "2000", "--to-domain", "example.test",
                            "--from", "s@client.example", timeout=120)
    assert rc == 0 and rep["ok"] == N and rep["conn_errors"] == 0, (rep, err)
    wait_until(lambda: server.queue() == [], 60, "everything relayed")
    _, summary, _ = procs.stop(sink, sig=0)  # --expect: exits by itself after N messages
    failed = [ln for ln in server.logtext().splitlines() if " tls-failed " in ln]
    assert json.loads(summary)["tls_errors"] == 0 and failed == [], (summary, failed[:3])
    lines = record.read_text().splitlines()
    assert len(lines) == N
    plain = [ln for ln in lines if not re.search(r"\tTLSv1\.[23]$", ln)]
    assert plain == [], plain[:3]
    accepted = [ln for ln in server.logtext().splitlines() if " accepted " in ln]
    assert len(accepted) == N and all(TLS_FIELD.search(ln) for ln in accepted), accepted[:3]
    delivered = [ln for ln in server.logtext().splitlines() if " delivered " in ln]
    assert len(delivered) == N and all(" tls=anonymous" in ln for ln in delivered)

