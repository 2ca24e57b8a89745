"""Configuration reload (SIGHUP): what changes between the running and the new configuration.

A camera is compared by id and by every field of its ``[[cameras]]`` entry: an id only in the
new file is added, one only in the running set is removed, one whose entry differs in any way
is restarted, and the rest are left alone. ``[storage]`` and ``[api]`` are not applied live
(open files, the index, the listener depend on them), nor any other section but ``cameras``:
a change there is reported, not made.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from nvr.config import CameraConfig, Config, load_config


@dataclass(frozen=True, slots=True)
class ReloadReport:
    added: tuple[str, ...]
    removed: tuple[str, ...]
    restarted: tuple[str, ...]
    unchanged: tuple[str, ...]
    not_applied: tuple[str, ...]  # sections that changed but need a restart: "storage", "api"

    def summary(self) -> str:
        def ids(names: Sequence[str]) -> str:
            return ", ".join(names) if names else "none"

        return (
            f"reload: added {ids(self.added)}, removed {ids(self.removed)}, "
            f"restarted {ids(self.restarted)}, unchanged {len(self.unchanged)}"
        )


def plan_reload(running: Mapping[str, CameraConfig], old: Config, new: Config) -> ReloadReport:
    """Compare the cameras that run (by id) and the sections of ``old`` with ``new``."""
    wanted = {cam.id: cam for cam in new.cameras}
    return ReloadReport(
        added=tuple(i for i in wanted if i not in running),
        removed=tuple(i for i in running if i not in wanted),
        restarted=tuple(i for i, cam in wanted.items() if i in running and running[i] != cam),
        unchanged=tuple(i for i, cam in wanted.items() if running.get(i) == cam),
        not_applied=tuple(
            s for s in Config.model_fields if s != "cameras" and getattr(old, s) != getattr(new, s)
        ),
    )


def read_config(path: Path) -> Config:
    """Load and validate the file, password files included; raises ``ConfigError``."""
    cfg = load_config(path)
    for cam in cfg.cameras:
        cam.credentials()  # an unreadable password_file refuses the reload, not a reconnect
    return cfg


def one_line(text: str) -> str:
    """A multi-line error (one line per bad key) as one log line."""
    return text.replace(":\n", ": ").replace("\n", "; ")
