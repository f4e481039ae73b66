"""The command lines: -V, --default-config, -t diagnostics, start-up errors, ringmxctl errors."""
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import time

import pytest

from conftest import REPO, Ringmx, binary, free_port, port_free, wait_port, wait_until

TLS_FIXTURES = os.path.join(REPO, "tests", "fixtures", "tls")
DEFAULT_PORTS = (2525, 2587, 2465)

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


def tls_pair(name):
    return os.path.join(TLS_FIXTURES, name + ".pem"), os.path.join(TLS_FIXTURES, name + ".key")


def test_default_config_round_trips(tmp_path):
    rc, out, err = run(binary("ringmx"), "--default-config")
    assert rc == 0, err
    for needle in ("127.0.0.1:2525", "127.0.0.1:2587", "127.0.0.1:2465", "role: mx",
                   "role: submission", "./var/tls/cert.pem", "example.test", "spool_dir:",
                   "control_socket:", "mynetworks:", "limits:"):
        assert needle in out, needle
    (tmp_path / "default.yaml").write_text(out)
    # as a -c file, a missing certificate is an error: only the built-in default gets one made
    rc, _, err = run(binary("ringmx"), "-t", "-c", "default.yaml", cwd=tmp_path)
    assert rc == EXIT_CONFIG and "tls.certificate: cannot read file" in err, err
    (tmp_path / "var" / "tls").mkdir(parents=True)
    cert, key = tls_pair("ecdsa")  # names localhost too
    shutil.copy(cert, tmp_path / "var" / "tls" / "cert.pem")
    shutil.copy(key, tmp_path / "var" / "tls" / "key.pem")
    rc, out, err = run(binary("ringmx"), "-t", "-c", "default.yaml", cwd=tmp_path)
    assert rc == 0, err
    assert "configuration ok" in out
    # submission needs users, which come with the auth issue; nothing else to warn about
    assert [x for x in err.splitlines() if "auth.passwd_file" not in x] == [], err


def test_builtin_default_check_creates_nothing(tmp_path):
    rc, out, err = run(binary("ringmx"), "-t", cwd=tmp_path)
    assert rc == 0, err
    assert ("<default>: tls.certificate ./var/tls/cert.pem does not exist yet: a self-signed "
            "certificate for localhost will be created at start") in out, out
    assert "<default>: configuration ok" in out
    assert list(tmp_path.iterdir()) == [], "-t creates no files"


@pytest.mark.skipif(not all(port_free(p) for p in DEFAULT_PORTS),
                    reason="the built-in default's ports 2525/2587/2465 are taken")
def test_builtin_default_start_creates_a_self_signed_certificate(tmp_path):
    def start():
        proc = subprocess.Popen([binary("ringmx")], cwd=tmp_path, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        try:
            for port in DEFAULT_PORTS:
                wait_port("127.0.0.1", port, proc=proc)
        finally:
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        return err.decode(errors="replace")

    err = start()
    cert, key = tmp_path / "var" / "tls" / "cert.pem", tmp_path / "var" / "tls" / "key.pem"
    created = [x for x in err.splitlines() if "self-signed; replace it for production" in x]
    assert len(created) == 1, err
    assert "./var/tls/cert.pem" in created[0] and "localhost" in created[0], created[0]
    assert cert.read_text().startswith("-----BEGIN CERTIFICATE-----")
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    # the pair it made passes the certificate checks of -t for hostname localhost
    rc, out, err = run(binary("ringmx"), "-t", cwd=tmp_path)
    assert rc == 0 and "will be created" not in out, out
    assert [x for x in err.splitlines() if "tls." in x] == [], err
    # made once: a second start keeps it
    before = cert.read_bytes()
    assert "self-signed" not in start()
    assert cert.read_bytes() == before


def test_given_config_never_gets_a_certificate(tmp_path):
    text = (base_yaml(tmp_path).replace("tls: none", "tls: may")
            + "tls: { certificate: ./var/tls/cert.pem, key: ./var/tls/key.pem }\n")
    (tmp_path / "ringmx.yaml").write_text(text)
    rc, out, err = run(binary("ringmx"), "-c", "ringmx.yaml", cwd=tmp_path, timeout=10)
    assert rc == EXIT_CONFIG and "tls.certificate: cannot read file" in err, err
    assert not (tmp_path / "var").exists()


def warn_yaml(tmp_path, listen, extra="", cert="ecdsa", hostname="mx.ringmx.test"):
    """A config with these listener entries and (unless cert is None) a fixture certificate."""
    text = (f"hostname: {hostname}\n"
            f"spool_dir: {tmp_path}/spool\n"
            f"control_socket: {tmp_path}/ctl.sock\n"
            f"listen:\n" + "".join(f"  - {{ {x} }}\n" for x in listen)
            + ("" if "mynetworks:" in extra else "mynetworks: [ 127.0.0.0/8 ]\n") + extra)
    if cert:
        c, k = tls_pair(cert)
        text += f"tls: {{ certificate: {c}, key: {k} }}\n"
    return text


GOOD_LISTEN = ['address: "0.0.0.0:25", role: mx, tls: may',
               'address: "0.0.0.0:587", role: submission, tls: required, auth: required',
               'address: "0.0.0.0:465", role: submission, tls: implicit, auth: required']
PASSWD = f"auth: {{ passwd_file: {TLS_FIXTURES}/ca.pem }}\n"  # any readable file will do


def test_check_without_warnings(tmp_path):
    path, rc, out, err = check(tmp_path, warn_yaml(tmp_path, GOOD_LISTEN, PASSWD))
    assert (rc, err) == (0, ""), err
    assert "configuration ok" in out


@pytest.mark.parametrize("listen,extra,cert,expect", [
    (['address: "0.0.0.0:587", role: submission, tls: none, auth: required'], PASSWD, "ecdsa",
     "warning: listen[0] 0.0.0.0:587: auth: required with tls: none: passwords would cross "
     "the network in clear text (set tls: required, or tls: implicit on port 465)"),
    (['address: "0.0.0.0:25", role: mx, tls: required'], "", "ecdsa",
     "warning: listen[0] 0.0.0.0:25: role: mx with tls: required: RFC 3207 forbids requiring "
     "TLS of MTAs, mail from servers without TLS would be refused (set tls: may)"),
    (GOOD_LISTEN[:1] + ['address: "0.0.0.0:25", role: submission, tls: required, '
                        'auth: required'], PASSWD, "ecdsa",
     "warning: listen[1] 0.0.0.0:25: role: submission on port 25: ISPs block port 25"),
    (GOOD_LISTEN, "mynetworks: [ 0.0.0.0/0 ]\n" + PASSWD, "ecdsa",
     "warning: mynetworks[0] 0.0.0.0/0: not a private, loopback or link-local network: "
     "anyone on the Internet may relay anywhere without AUTH, an open relay for the world"),
    (GOOD_LISTEN, 'mynetworks: [ 10.0.0.0/8, "2001:db8::/32" ]\n' + PASSWD, "ecdsa",
     "warning: mynetworks[1] 2001:db8::/32: not a private"),
    (['address: "0.0.0.0:587", role: submission, tls: required, auth: "off"'], "", "ecdsa",
     "warning: listen[0] 0.0.0.0:587: role: submission with auth: off: clients in "
     "mynetworks or allow-ip relay anywhere without logging in"),
    (GOOD_LISTEN[:1], "", None,
     "warning: listen[0] 0.0.0.0:25: tls: may without tls.certificate: STARTTLS would not "
     "be offered"),
    (GOOD_LISTEN[:1], "", "expired",
     f"warning: tls.certificate {TLS_FIXTURES}/expired.pem: expired on 2001-01-01"),
    (GOOD_LISTEN[:1], "", "wrongname",
     f"warning: tls.certificate {TLS_FIXTURES}/wrongname.pem: does not name mx.ringmx.test"),
], ids=["auth-without-tls", "mx-requires-tls", "submission-on-25", "open-relay",
        "mynetworks-public", "submission-without-auth", "tls-without-certificate",
        "expired", "wrong-name"])
def test_security_warning(tmp_path, listen, extra, cert, expect):
    path, rc, out, err = check(tmp_path, warn_yaml(tmp_path, listen, extra, cert))
    assert rc == 0, err  # warnings do not change the exit code
    assert "configuration ok" in out
    lines = err.splitlines()
    assert all(x.startswith("warning: ") for x in lines), err
    assert [x for x in lines if x.startswith(expect)], err


def test_key_mismatch_and_sni_warnings(tmp_path):
    cert, _ = tls_pair("ecdsa")
    other_cert, other_key = tls_pair("other")
    text = (warn_yaml(tmp_path, GOOD_LISTEN[:1], cert=None)
            + f"tls:\n  certificate: {cert}\n  key: {TLS_FIXTURES}/mismatch.key\n"
            f"  sni:\n"
            f"    Other.Ringmx.Test: {{ certificate: {other_cert}, key: {other_key} }}\n"
            f"    wrong.ringmx.test: {{ certificate: {other_cert}, key: {other_key} }}\n")
    path, rc, out, err = check(tmp_path, text)
    assert rc == 0 and "configuration ok" in out, err
    assert err.splitlines() == [
        f"warning: tls.key {TLS_FIXTURES}/mismatch.key: does not match tls.certificate {cert}: "
        "the TLS server refuses to load the pair and no handshake could succeed (use the key "
        "the certificate was made with)",
        f"warning: tls.sni.wrong.ringmx.test.certificate {other_cert}: does not name "
        "wrong.ringmx.test: clients that check the name refuse it (get a certificate for "
        "wrong.ringmx.test)",
    ], err


def test_warnings_and_errors_together(tmp_path):
    """An invalid config still names its security problems; the exit code is the error's."""
    text = warn_yaml(tmp_path, ['address: "0.0.0.0:25", role: mx, tls: required'])
    text += f"recipient_map: {tmp_path}/map\n"
    (tmp_path / "map").write_text("not an address\n")
    path, rc, out, err = check(tmp_path, text)
    assert rc == EXIT_CONFIG
    assert f"{tmp_path}/map:1:" in err and "RFC 3207" in err, err


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
