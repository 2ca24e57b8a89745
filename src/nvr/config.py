"""The TOML configuration, validated with pydantic.

Every error names the key path (``cameras[2].url``) and the bad value, never a password.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import SplitResult, unquote, urlsplit

from pydantic import (
    BaseModel,
    ByteSize,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from nvr.errors import ConfigError
from nvr.redact import redact_url

CAMERA_ID_RE = re.compile(r"^[a-z0-9-]+$")
_SECRET_KEYS = {"password"}


def _split_url(value: str) -> SplitResult:
    """``urlsplit`` that also checks the port, with a message fit for a config error."""
    try:
        parts = urlsplit(value)
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"not a valid URL ({exc})") from None
    return parts


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class StorageConfig(_Model):
    path: Path = Path("/var/lib/nvr")
    segment_seconds: Annotated[int, Field(ge=2, le=3600)] = 60
    index: Path | None = None  # default: <path>/index.db
    writer_queue_frames: Annotated[int, Field(ge=16, le=100_000)] = 500
    require_mount: bool = False  # refuse to start unless `path` is a mount point of its own
    # The free-space floor retention keeps: the larger of the two (bytes accept "10GiB").
    min_free_bytes: ByteSize | None = None
    min_free_percent: Annotated[float, Field(ge=0, le=90)] = 5.0
    retention_interval_s: Annotated[float, Field(gt=0, le=86_400)] = 60.0  # age/size rules
    space_check_s: Annotated[float, Field(gt=0, le=600)] = 1.0  # free space against the floor

    @property
    def index_path(self) -> Path:
        return self.index if self.index is not None else self.path / "index.db"


class ApiConfig(_Model):
    listen: str = "127.0.0.1:8080"
    max_clip_seconds: Annotated[int, Field(ge=1, le=7 * 86_400)] = 86_400  # video.mp4, exports
    export_concurrency: Annotated[int, Field(ge=1, le=16)] = 2  # export jobs writing at once

    @field_validator("listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
            raise ValueError("expected HOST:PORT, e.g. 127.0.0.1:8080 (port 0: any free port)")
        return value


class CameraConfig(_Model):
    id: str
    name: str = ""
    url: str | None = None  # the RTSP stream, or:
    onvif: str | None = None  # the camera's ONVIF address; the stream URI is asked of it
    profile: str = "main"  # with onvif: "main", "sub" or a profile token
    discovery_targets: list[str] = []  # with onvif: hosts/CIDRs to probe if the camera moves
    discovery_multicast: bool = True  # with onvif: also probe by multicast if the camera moves
    onvif_check_s: Annotated[float, Field(gt=0, le=86_400)] = 300.0  # how often to check it
    username: str | None = None
    password: SecretStr | None = None
    password_file: Path | None = None
    transport: Literal["tcp", "udp"] = "tcp"
    audio: Literal["copy", "aac", "off"] = "copy"
    enabled: bool = True
    stall_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    connect_timeout_s: Annotated[float, Field(gt=0, le=300)] = 10.0
    backoff_initial_s: Annotated[float, Field(gt=0, le=600)] = 1.0
    backoff_max_s: Annotated[float, Field(gt=0, le=3600)] = 60.0
    retain_days: Annotated[float, Field(gt=0, le=36_500)] | None = None  # delete older footage
    retain_bytes: ByteSize | None = None  # keep at most this much of this camera ("2TB")

    @field_validator("id")
    @classmethod
    def _id_shape(cls, value: str) -> str:
        if not CAMERA_ID_RE.fullmatch(value) or len(value) > 64:
            raise ValueError("must be 1-64 characters of a-z, 0-9 and '-'")
        return value

    @field_validator("url")
    @classmethod
    def _rtsp_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = _split_url(value)
        if parts.scheme not in ("rtsp", "rtsps"):
            raise ValueError("must start with rtsp://")
        if not parts.hostname:
            raise ValueError("has no host")
        return value

    @field_validator("onvif")
    @classmethod
    def _onvif_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = _split_url(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError("must be http://HOST[:PORT][/onvif/device_service]")
        if parts.username is not None or parts.password is not None:
            raise ValueError("must not carry credentials; use username and password_file")
        return value

    @model_validator(mode="after")
    def _one_password_source(self) -> CameraConfig:
        if (self.url is None) == (self.onvif is None):
            raise ValueError("give either url (RTSP) or onvif (the camera's ONVIF address)")
        if self.password is not None and self.password_file is not None:
            raise ValueError("give either password or password_file, not both")
        if self.backoff_max_s < self.backoff_initial_s:
            raise ValueError("backoff_max_s must be >= backoff_initial_s")
        return self

    def credentials(self) -> tuple[str | None, str | None]:
        """Username and password: config keys first, then URL userinfo (percent-decoded)."""
        parts = urlsplit(self.url or "")
        user = self.username
        if user is None and parts.username is not None:
            user = unquote(parts.username)
        password: str | None = None
        if self.password is not None:
            password = self.password.get_secret_value()
        elif self.password_file is not None:
            try:
                password = self.password_file.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ConfigError(
                    f"camera {self.id}: cannot read password_file {self.password_file}: "
                    f"{exc.strerror}"
                ) from None
        elif parts.password is not None:
            password = unquote(parts.password)
        return user, password

    @property
    def safe_url(self) -> str:
        """Where the camera is, for logs and the API: the RTSP URL redacted, or the ONVIF one."""
        if self.url is not None:
            return redact_url(self.url)
        return f"{self.onvif} (ONVIF, profile {self.profile})"


class Config(_Model):
    storage: StorageConfig = StorageConfig()
    api: ApiConfig = ApiConfig()
    cameras: list[CameraConfig] = []

    def public(self) -> dict[str, Any]:
        """The whole configuration as JSON data without secrets: no password, URLs redacted."""
        data: dict[str, Any] = self.model_dump(
            mode="json", exclude={"cameras": {"__all__": {"password"}}}
        )
        for cam, out in zip(self.cameras, data["cameras"], strict=True):
            out["url"] = redact_url(cam.url) if cam.url is not None else None
            out["onvif"] = redact_url(cam.onvif) if cam.onvif is not None else None
        return data

    @model_validator(mode="after")
    def _unique_ids(self) -> Config:
        seen: set[str] = set()
        for cam in self.cameras:
            if cam.id in seen:
                raise ValueError(f"camera id {cam.id!r} is used twice")
            seen.add(cam.id)
        return self


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else part
    return out or "(top level)"


def _describe(err: ValidationError) -> str:
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(p for p in e["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        where = _loc(loc)
        msg = e["msg"].removeprefix("Value error, ")
        value = e.get("input")
        if loc and loc[-1] in _SECRET_KEYS:
            shown = "***"
        elif isinstance(value, str):
            shown = repr(redact_url(value))
        elif isinstance(value, dict):
            shown = ""  # a whole table: its keys are named by the message
        else:
            shown = repr(value)
        if e["type"] == "missing":
            lines.append(f"{where}: missing")
        elif e["type"] == "extra_forbidden":
            lines.append(f"{where}: unknown key")
        else:
            lines.append(f"{where}: {msg}" + (f" (got {shown})" if shown else ""))
    return "\n".join(lines)


def parse_config(text: str, source: str = "<config>") -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source}: invalid configuration:\n{_describe(exc)}") from None


def load_config(path: Path) -> Config:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text: {exc}") from None
    return parse_config(text, str(path))
