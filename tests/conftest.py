"""Shared fixtures: the simulated camera, one process per auth method for the session."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest

from nvr.api import auth
from support.api import ISSUED_TOKENS
from support.fakecam import FakeCam, fakecam_unavailable_reason, make_clips

CAM_USER = "officer"
CAM_PASSWORD = "p@ss:/w%rd#?"  # reserved characters on purpose


class _SecretWatch(logging.Handler):
    """Sees every log record of the whole run; keeps any that carries a secret.

    The secrets: the cameras' password (as typed and percent-encoded) and every API token the
    tests issue (``support.api`` registers them). A leak fails the run at its end, whichever
    test caused it.
    """

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.leaks: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = record.getMessage()
        except Exception:  # a broken record is the logging call's problem, not a leak
            return
        if record.exc_info and record.exc_info[1] is not None:
            text += f" {record.exc_info[1]!r}"
        secrets = (CAM_PASSWORD, quote(CAM_PASSWORD, safe=""), *ISSUED_TOKENS)
        if any(secret in text for secret in secrets):
            self.leaks.append(f"{record.name}: {text[:300]}")


_WATCH = _SecretWatch()


def pytest_sessionstart(session: pytest.Session) -> None:
    # Tokens made inside the code under test (POST /api/v1/tokens, `nvr token add`) are
    # watched too: wrap the generator before the test modules import it.
    real = auth.new_token

    def tracked() -> str:
        token = real()
        ISSUED_TOKENS.add(token)
        return token

    auth.new_token = tracked
    root = logging.getLogger()
    root.addHandler(_WATCH)
    root.setLevel(logging.DEBUG)  # every line any test makes passes the watch
    logging.getLogger("aiosqlite").setLevel(logging.INFO)  # a line per SQL call: noise


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _WATCH.leaks:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _WATCH.leaks:
        terminalreporter.section("secrets in log lines", sep="!", red=True)
        for line in _WATCH.leaks[:20]:
            terminalreporter.line(line)


@pytest.fixture(scope="session")
def fakecam_media() -> Path:
    """The looped source clips, cached across runs (they take a few seconds to encode)."""
    media = Path(os.environ.get("NVR_FAKECAM_MEDIA", "/tmp/nvr-fakecam-media"))
    reason = fakecam_unavailable_reason()
    if reason is not None:
        pytest.skip(f"simulated camera unavailable: {reason}")
    make_clips(media)
    return media


def _start(auth: str, media: Path) -> Iterator[FakeCam]:
    cam = FakeCam().start(auth=auth, user=CAM_USER, password=CAM_PASSWORD, media_dir=media)  # type: ignore[arg-type]  # auth is one of the literals
    try:
        yield cam
    finally:
        cam.stop()


@pytest.fixture(scope="session")
def cam_none(fakecam_media: Path) -> Iterator[FakeCam]:
    yield from _start("none", fakecam_media)


@pytest.fixture(scope="session")
def cam_basic(fakecam_media: Path) -> Iterator[FakeCam]:
    yield from _start("basic", fakecam_media)


@pytest.fixture(scope="session")
def cam_digest(fakecam_media: Path) -> Iterator[FakeCam]:
    yield from _start("digest", fakecam_media)


@pytest.fixture
def cam_private(fakecam_media: Path) -> Iterator[FakeCam]:
    """A camera of the test's own, for drills that drop or stall every client."""
    yield from _start("none", fakecam_media)
