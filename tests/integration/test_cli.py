"""The command lines: -V, --default-config, -t diagnostics, start-up errors, ringmxctl errors."""
import os
import re
import socket
import subprocess

import pytest

from conftest import Ringmx, binary, free_port, wait_port

EXIT_CONFIG = 2


def run(*args, timeout=20, **kw):
    r = subprocess.run(list(args), capture_output=True, timeout=timeout, **kw)
    return r.returncode, r.stdout.decode(errors="replace"), r.stderr.decode(errors="replace")


def base_yaml(tmp_path, port=None):
    return (f"hostname: mx.example.test\n"
            f"spool_dir: {tmp_path}/spool\n"
            f"control_socket: {tmp_path}/ctl.sock\n"
            f"listen:\n"
            f"  - {{ address: \"127.0.0.1:{port or free_port()}\", role: mx, tls: none }}\n"
            f"relay_domains: [ example.test ]\n"
            f"mynetworks: [ 127.0.0.1/32 ]\n")


def position(text, token):
    """1-based (line, column) of the first occurrence of token in text."""
    before = text[:text.index(token)]
    return before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1


def assert_reported(err_line, path, text, token, key):
    """err_line is "path:line:col: key..." with line:col inside token's place in text."""
    line, col = position(text, token)
    m = re.match(rf"{re.escape(path)}:(\d+):(\d+): {re.escape(key)}:", err_line)
    assert m, (err_line, key)
    assert int(m.group(1)) == line and col <= int(m.group(2)) < col + len(token), (err_line, token)


def check(tmp_path, text, name="ringmx.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return (str(path),) + run(binary("ringmx"), "-t", "-c", str(path))


def test_version():
    rc, out, err = run(binary("ringmx"), "-V")
    assert rc == 0, err
    assert re.fullmatch(r"ringmx \d+\.\d+\.\d+\n", out), out


def test_default_config_round_trips(tmp_path):
    rc, out, err = run(binary("ringmx"), "--default-config")
    assert rc == 0, err
    for needle in ("127.0.0.1:2525", "role: mx", "example.test", "spool_dir:",
                   "control_socket:", "mynetworks:", "limits:"):
        assert needle in out, needle
    path, rc, out, err = check(tmp_path, out, "default.yaml")
    assert rc == 0, err
    assert "configuration ok" in out


def test_valid_config_checks_ok(tmp_path):
    path, rc, out, err = check(tmp_path, base_yaml(tmp_path))
    assert (rc, err) == (0, "")
    assert not (tmp_path / "spool").exists(), "-t starts nothing"


@pytest.mark.parametrize("extra,token,key", [
    ("frobnicate: 1\n", "frobnicate", "frobnicate"),
    ("limits: { max_conections: 5 }\n", "max_conections", "limits.max_conections"),
    ("workers: many\n", "many", "workers"),
    ("limits: { max_recipients: lots }\n", "lots", "limits.max_recipients"),
    ("limits: { command_timeout: soon }\n", "soon", "limits.command_timeout"),
    ("log: [ info ]\n", "[ info ]", "log"),
    ("outbound: { port: 1.5 }\n", "1.5", "outbound.port"),
], ids=["unknown-key", "unknown-nested-key", "not-an-integer", "not-an-integer-nested",
        "not-a-duration", "not-a-mapping", "not-an-integer-float"])
def test_one_problem_one_line(tmp_path, extra, token, key):
    text = base_yaml(tmp_path) + extra
    path, rc, out, err = check(tmp_path, text)
    assert rc == EXIT_CONFIG
    assert len(err.splitlines()) == 1, err
    assert_reported(err, path, text, token, key)


@pytest.mark.parametrize("old,new,key", [
    ('"127.0.0.1:{port}"', '"127.0.0.1:99999"', "listen[0].address"),
    ('"127.0.0.1:{port}"', '"not-an-address"', "listen[0].address"),
    ("127.0.0.1/32", "127.0.0.1/33", "mynetworks[0]"),
    ("127.0.0.1/32", "10.0.0.300/8", "mynetworks[0]"),
    ("127.0.0.1/32", '"::1/129"', "mynetworks[0]"),
    ("[ example.test ]", '[ "bad domain" ]', "relay_domains[0]"),
], ids=["port-range", "address", "cidr-prefix", "cidr-octet", "cidr-v6", "domain"])
def test_bad_value_reported_at_its_position(tmp_path, old, new, key):
    port = free_port()
    text = base_yaml(tmp_path, port).replace(old.format(port=port), new)
    path, rc, out, err = check(tmp_path, text)
    assert rc == EXIT_CONFIG
    assert len(err.splitlines()) == 1, err
    assert_reported(err, path, text, new, key)


def test_unreadable_recipient_map(tmp_path):
    text = base_yaml(tmp_path) + f"recipient_map: {tmp_path}/no-such-map\n"
    path, rc, out, err = check(tmp_path, text)
    assert rc == EXIT_CONFIG
    assert_reported(err, path, text, f"{tmp_path}/no-such-map", "recipient_map")
    assert "cannot read file" in err


def test_malformed_recipient_map_line(tmp_path):
    (tmp_path / "map").write_text("known@example.test\nnot an address\n")
    path, rc, out, err = check(tmp_path, base_yaml(tmp_path) + f"recipient_map: {tmp_path}/map\n")
    assert rc == EXIT_CONFIG
    assert f"{tmp_path}/map:2:" in err, err


def test_several_problems_several_lines(tmp_path):
    text = (base_yaml(tmp_path).replace("127.0.0.1/32", "127.0.0.1/40")
            + "frobnicate: 1\nworkers: many\n"
            + f"recipient_map: {tmp_path}/absent\n")
    path, rc, out, err = check(tmp_path, text)
    assert rc == EXIT_CONFIG
    lines = err.splitlines()
    expected = [("127.0.0.1/40", "mynetworks[0]"), ("frobnicate", "frobnicate"),
                ("many", "workers"), (f"{tmp_path}/absent", "recipient_map")]
    assert len(lines) == len(expected), err
    for token, key in expected:
        assert_reported(next((x for x in lines if f": {key}" in x), ""), path, text, token, key)


def test_yaml_syntax_error(tmp_path):
    path, rc, out, err = check(tmp_path, base_yaml(tmp_path) + "limits: [ 1, 2\n")
    assert rc == EXIT_CONFIG
    assert re.match(rf"{re.escape(path)}:\d+:\d+: ", err), err


def test_missing_config_file(tmp_path):
    rc, out, err = run(binary("ringmx"), "-t", "-c", str(tmp_path / "absent.yaml"))
    assert rc == EXIT_CONFIG
    assert str(tmp_path / "absent.yaml") in err and "cannot read" in err


def test_config_error_starts_nothing(tmp_path):
    port = free_port()
    path = tmp_path / "ringmx.yaml"
    path.write_text(base_yaml(tmp_path, port) + "frobnicate: 1\n")
    rc, out, err = run(binary("ringmx"), "-c", str(path))
    assert rc == EXIT_CONFIG
    assert "frobnicate" in err
    assert not (tmp_path / "spool").exists()


def test_spool_dir_under_a_regular_file(tmp_path):
    (tmp_path / "plain").write_text("not a directory\n")
    port = free_port()
    path = tmp_path / "ringmx.yaml"
    path.write_text(base_yaml(tmp_path, port).replace(f"{tmp_path}/spool",
                                                      f"{tmp_path}/plain/spool"))
    rc, out, err = run(binary("ringmx"), "-c", str(path), timeout=10)
    assert rc != 0
    assert f"spool_dir {tmp_path}/plain/spool" in err, err
    assert "Not a directory" in err
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()


def test_missing_spool_dir_is_created(ringmx_factory, tmp_path):
    server = ringmx_factory(spool_dir=str(tmp_path / "new" / "spool"))
    assert (tmp_path / "new" / "spool").is_dir()
    assert server.queue() == []


def test_port_taken_by_another_program(tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)
        port = other.getsockname()[1]
        path = tmp_path / "ringmx.yaml"
        path.write_text(base_yaml(tmp_path, port))
        rc, out, err = run(binary("ringmx"), "-c", str(path), timeout=10)
    assert rc != 0
    assert f"127.0.0.1:{port}" in err and "in use" in err, err


def test_second_server_on_the_same_port_refused(ringmx_factory, tmp_path):
    first = ringmx_factory()
    (tmp_path / "second").mkdir()
    second = Ringmx(tmp_path / "second", listen=first.cfg["listen"])
    proc = subprocess.Popen([binary("ringmx"), "-c", second.cfg_path],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        rc = proc.wait(3)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        rc = None
    assert rc not in (None, 0), "the second server kept running on a port in use"


def test_ringmxctl_without_server(tmp_path):
    path = tmp_path / "ringmx.yaml"
    path.write_text(base_yaml(tmp_path))
    for args in (["queue"], ["queue", "--json"], ["stats"], ["show", "0123"]):
        rc, out, err = run(binary("ringmxctl"), "-c", str(path), *args)
        assert rc != 0 and out == ""
        assert f"cannot connect to {tmp_path}/ctl.sock" in err, err


def test_ringmxctl_bad_config_and_usage(tmp_path):
    path = tmp_path / "ringmx.yaml"
    path.write_text(base_yaml(tmp_path) + "frobnicate: 1\n")
    rc, out, err = run(binary("ringmxctl"), "-c", str(path), "queue")
    assert rc == EXIT_CONFIG and "frobnicate" in err
    rc, out, err = run(binary("ringmxctl"))
    assert rc != 0 and "usage" in err


def test_ringmxctl_errors_from_a_running_server(ringmx):
    r = ringmx.ctl("frobnicate", check=False)
    assert r.returncode != 0 and b"unknown command" in r.stderr
    r = ringmx.ctl("show", "00000000DEADBEEF", check=False)
    assert r.returncode != 0 and b"no such message" in r.stderr
    wait_port("127.0.0.1", ringmx.port)  # the server is unharmed
    assert ringmx.queue() == []


IO_URING_SYSCTL = "/proc/sys/kernel/io_uring_disabled"


@pytest.mark.skipif(not os.access(IO_URING_SYSCTL, os.W_OK),
                    reason="needs root and kernel.io_uring_disabled (Linux >= 6.6)")
def test_io_uring_forbidden_is_one_clear_line(tmp_path):
    """Where io_uring is forbidden (here by the sysctl, elsewhere by a container's seccomp
    profile), ringmx says why in one line and exits non-zero; nothing listens."""
    server = Ringmx(tmp_path)
    with open(IO_URING_SYSCTL) as f:
        before = f.read().strip()
    try:
        with open(IO_URING_SYSCTL, "w") as f:
            f.write("2")
        r = subprocess.run([binary("ringmx"), "-c", server.cfg_path], capture_output=True,
                           timeout=30)
    finally:
        with open(IO_URING_SYSCTL, "w") as f:
            f.write(before)
    assert r.returncode != 0
    lines = r.stderr.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ringmx: "), r.stderr
    assert "io_uring is not available" in lines[0] and "6.1" in lines[0], lines[0]
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
