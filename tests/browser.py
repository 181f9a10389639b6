"""Headless Chromium from Debian, driven by Selenium, inside a test namespace.

The page is served on 127.0.0.1:8080 *inside* the controller's namespace,
so the browser must run there: chromedriver is started with `ip netns
exec` (by `Testbed.spawn`, which also stops it at teardown) and starts
Chromium as its child, in the same namespace. The test process talks to
chromedriver over a socket opened from inside that namespace: every
WebDriver command runs within `netns()`. Nothing is ever downloaded: the
binaries are the Debian packages' and Selenium is only a client.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from pathlib import Path

from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from lab.netns import netns
from lab.processes import wait_until
from lab.testbed import Testbed

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--lang=en-US"]
LAPTOP = (1440, 960)
PHONE = (390, 844)


class Browser:
    """One Chromium session; `close()` (or the context manager) ends the
    browser, chromedriver and the temporary profile even after a failure."""

    def __init__(self, testbed: Testbed, ns: str, port: int = 9515, size: tuple[int, int] = LAPTOP):
        self.testbed, self.ns, self.port, self.size = testbed, ns, port, size
        self.profile: Path | None = None
        self.proc: subprocess.Popen | None = None
        self.driver: webdriver.Remote | None = None

    def __enter__(self) -> "Browser":
        try:
            self.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def start(self) -> None:
        self.profile = Path(tempfile.mkdtemp(prefix="lisp-chromium-"))
        log = self.testbed.tmpfile("chromedriver", ".log")
        self.proc = self.testbed.spawn(self.ns, [CHROMEDRIVER, f"--port={self.port}", f"--log-path={log}"],
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(self._listening, timeout=20, what=f"chromedriver on port {self.port} in {self.ns}")
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in FLAGS + [f"--user-data-dir={self.profile}", f"--window-size={self.size[0]},{self.size[1]}"]:
            options.add_argument(flag)
        with self.testbed.netns(self.ns):  # checks once that the namespace is ours
            self.driver = webdriver.Remote(command_executor=f"http://127.0.0.1:{self.port}", options=options)
        execute = self.driver.execute

        def in_namespace(*args, **kwargs):
            with netns(self.ns):
                return execute(*args, **kwargs)
        self.driver.execute = in_namespace  # every command, also those of WebElements

    def _listening(self) -> bool:
        with netns(self.ns):
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return True
            except OSError:
                return False

    def close(self) -> None:
        if self.driver is not None:
            with contextlib.suppress(Exception):
                self.driver.quit()
            self.driver = None
        if self.proc is not None:
            # chromedriver leads its own process group (Testbed.spawn starts a
            # new session); Chromium's processes that outlived quit() are in it.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(10)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc = None
        if self.profile is not None:
            shutil.rmtree(self.profile, ignore_errors=True)
            self.profile = None

    # -- what tests use ------------------------------------------------------
    def open(self, path: str = "/") -> None:
        self.driver.get(f"http://127.0.0.1:8080{path}")

    def wait(self, predicate, timeout: float = 15.0, what: str = "the page"):
        """Poll `predicate(driver)` until it is truthy; the message says what
        did not happen."""
        return WebDriverWait(self.driver, timeout, poll_frequency=0.1).until(
            lambda d: predicate(d), message=f"waited {timeout:.0f} s for {what}")

    def js(self, script: str, *args):
        return self.driver.execute_script(script, *args)

    def css(self, selector: str):
        return self.driver.find_elements(By.CSS_SELECTOR, selector)

    def one(self, selector: str):
        return self.driver.find_element(By.CSS_SELECTOR, selector)

    def text(self, selector: str) -> str:
        found = self.css(selector)
        return found[0].text if found else ""

    def attr(self, selector: str, name: str) -> str | None:
        return self.js("const e = document.querySelector(arguments[0]); return e && e.getAttribute(arguments[1]);",
                       selector, name)

    def screenshot(self, path: Path) -> Path:
        self.driver.save_screenshot(str(path))
        return path
