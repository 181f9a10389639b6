"""The CLI as a user runs it, where no controller is needed to show the
behaviour: bad URLs, a listener that never answers, a refused connection,
something that is not HTTP. Each ends in one line on stderr and a non-zero
exit status, never a traceback or a long hang. (The CLI against the real
controller: tests/test_api.py.)"""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def cli(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k != "LISP_CONTROLLER_URL"}
    return subprocess.run([sys.executable, "-m", "lisp_controller", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT, env={**environ, **(env or {})})


def one_error_line(r: subprocess.CompletedProcess) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.mark.parametrize("url, words", [
    ("notaurl", "must be http[s]://HOST[:PORT][/PATH], got 'notaurl'"), ("http://[::1", "Invalid IPv6 URL"),
    ("http://127.0.0.1:8080/?verbose=1", "must be just a scheme, host and port (and a path)"),
    ("http://127.0.0.1:8080/#top", "must be just a scheme"), ("http://127.0.0.1:8080?", "must be just a scheme"),
    ("http://127.0.0.1:99999", "Port out of range"), ("http://127.0.0.1:http", "Port could not be cast"),
    ("ftp://127.0.0.1", "must be http[s]://"), ("http://", "must be http[s]://"),
    ("http://a b:8080", "whitespace"), ("http://admin:pw@127.0.0.1:8080", "must be just a scheme"),
])
def test_a_bad_url_is_one_line_and_exit_status_2(url, words):
    for args, env, source in ((["--url", url], None, "--url"), ([], {"LISP_CONTROLLER_URL": url}, "LISP_CONTROLLER_URL")):
        r = cli("health", *args, env=env)
        assert r.returncode == 2, r
        line = one_error_line(r)
        assert line.startswith(f"error: {source}: not a controller URL like http://127.0.0.1:8080: ") \
            and words in line, line
    r = cli("mapping", "add", "10.2.0.0/16", "--iid", "5", "--rloc", "192.0.2.1", "--url", url)
    assert r.returncode == 2 and words in one_error_line(r)


def test_an_empty_url_variable_is_an_error_not_the_default():
    r = cli("health", env={"LISP_CONTROLLER_URL": ""})
    assert r.returncode == 2
    assert one_error_line(r) == ("error: LISP_CONTROLLER_URL: not a controller URL like http://127.0.0.1:8080: "
                                 "must be http[s]://HOST[:PORT][/PATH], got ''")


@contextlib.contextmanager
def listener(answer: bytes | None = None):
    """A TCP listener on loopback that never answers (answer None: it does
    not even accept; the kernel completes the handshake), or that answers
    every connection with `answer` and closes it."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(16)
    stop = threading.Event()

    def serve():
        s.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = s.accept()
            except OSError:
                continue
            with conn:
                conn.recv(65536)
                conn.sendall(answer)
    thread = threading.Thread(target=serve, daemon=True)
    if answer is not None:
        thread.start()
    try:
        yield f"http://127.0.0.1:{s.getsockname()[1]}"
    finally:
        stop.set()
        if answer is not None:
            thread.join(5)
        s.close()


def test_a_listener_that_never_answers_times_out_with_one_line():
    with listener() as url:
        started = time.monotonic()
        r = cli("health", "--url", url, "--timeout", "1.5")
        took = time.monotonic() - started
        assert r.returncode == 3 and took < 20, (took, r)
        assert one_error_line(r) == f"error: no answer from the controller at {url} within 1.5 s (--timeout)"
        # A write that times out may have been applied: the user is told.
        r = cli("mapping", "delete", "10.2.0.0/16", "--iid", "5", "--url", url, "--timeout", "1")
        assert r.returncode == 3 and "the change may have been applied all the same" in one_error_line(r)
        # The default for reads is a few seconds, not minutes.
        started = time.monotonic()
        r = cli("mapping", "list", "--url", url)
        took = time.monotonic() - started
        assert r.returncode == 3 and "within 10 s (--timeout)" in one_error_line(r) and took < 30, took


@pytest.mark.parametrize("value", ["0", "-1", "nan", "inf", "soon", "86401"])
def test_timeout_must_be_seconds(value):
    r = cli("health", "--timeout", value)
    assert r.returncode == 2 and "argument --timeout: expected seconds between 0 and 86400" in r.stderr
    assert "Traceback" not in r.stderr


def test_refused_connection_and_an_answer_that_is_not_http():
    with listener() as url:
        pass  # closed: nothing listens on its port any more
    r = cli("health", "--url", url)
    assert r.returncode == 3 and one_error_line(r).startswith(f"error: cannot reach the controller at {url}: ")
    with listener(b"SSH-2.0-OpenSSH_9.2\r\n") as url:
        r = cli("health", "--url", url)
        assert r.returncode == 3 and one_error_line(r).startswith(f"error: the controller at {url} broke off")
    with listener(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n{nope") as url:
        r = cli("health", "--url", url)
        assert r.returncode == 3 and "Expecting property name" in one_error_line(r)


@pytest.mark.parametrize("iid", ["1_000", "\u0661\u0662", " 5", "-1", "16777216"])
def test_iid_arguments_are_plain_decimal(iid):
    r = cli("mapping", "get", "10.2.0.0/16", "--iid", iid)
    assert r.returncode == 2 and "argument --iid:" in r.stderr and "Traceback" not in r.stderr


def test_a_bulk_file_with_a_key_twice_is_refused_before_sending(tmp_path):
    path = tmp_path / "bulk.json"
    path.write_text('{"mappings": [{"iid": 5, "eid": "10.2.0.0/16", "eid": "10.3.0.0/16"}]}')
    r = cli("mapping", "bulk", str(path), "--url", "http://127.0.0.1:9")  # never reached
    assert r.returncode == 2
    assert one_error_line(r) == f"error: {path}: key 'eid' is given twice in one JSON object"
