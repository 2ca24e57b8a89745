"""Shared fixtures: the simulated camera, one process per auth method for the session."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.fakecam import FakeCam, fakecam_unavailable_reason, make_clips

CAM_USER = "officer"
CAM_PASSWORD = "p@ss:/w%rd#?"  # reserved characters on purpose


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
