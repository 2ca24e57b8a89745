"""Configuration: good files load, bad ones are refused naming the key path and the bad value."""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path

import pytest

from nvr.cli import main
from nvr.config import load_config, parse_config
from nvr.errors import ConfigError
from nvr.ingest.camera import backoff_delay_s
from nvr.logs import JournalFormatter
from nvr.redact import redact_url

GOOD = """
[storage]
path = "/var/lib/nvr"
segment_seconds = 60
[api]
listen = "127.0.0.1:8080"
[[cameras]]
id = "song-cau-01"
name = "Chợ Đức Xuân gate"
url = "rtsp://198.51.100.7:554/Streaming/Channels/101"
username = "admin"
password = "s3cr#t"
transport = "tcp"
audio = "copy"
"""


def test_the_example_in_the_package_is_valid() -> None:
    example = Path(__file__).parents[1] / "src" / "nvr" / "config.example.toml"
    cfg = load_config(example)
    assert cfg.cameras[0].id == "song-cau-01"


def test_a_good_config_loads() -> None:
    cfg = parse_config(GOOD)
    cam = cfg.cameras[0]
    assert cam.name == "Chợ Đức Xuân gate"
    assert cam.credentials() == ("admin", "s3cr#t")
    assert "s3cr#t" not in repr(cfg)


@pytest.mark.parametrize(
    ("replace", "by", "message"),
    [
        ('id = "song-cau-01"', 'id = "Song_Cau"',
         "cameras[0].id: must be 1-64 characters of a-z, 0-9 and '-' (got 'Song_Cau')"),
        ('transport = "tcp"', 'transport = "sctp"',
         "cameras[0].transport: Input should be 'tcp' or 'udp' (got 'sctp')"),
        ('audio = "copy"', 'audio = "mp3"',
         "cameras[0].audio: Input should be 'copy', 'aac' or 'off' (got 'mp3')"),
        ("segment_seconds = 60", "segment_seconds = 0",
         "storage.segment_seconds: Input should be greater than or equal to 2 (got 0)"),
        ('listen = "127.0.0.1:8080"', 'listen = "localhost"',
         "api.listen: expected HOST:PORT, e.g. 127.0.0.1:8080 (port 0: any free port) "
         "(got 'localhost')"),
        ('url = "rtsp://198.51.100.7:554/Streaming/Channels/101"', 'url = "http://x/"',
         "cameras[0].url: must start with rtsp:// (got 'http://x/')"),
        ('transport = "tcp"', 'transport = "tcp"\ncolour = "red"',
         "cameras[0].colour: unknown key"),
    ],
)  # fmt: skip
def test_errors_name_the_key_path_and_value(replace: str, by: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(GOOD.replace(replace, by), "nvr.toml")
    assert str(info.value) == f"nvr.toml: invalid configuration:\n{message}"


def test_passwords_never_appear_in_errors() -> None:
    bad = GOOD.replace('url = "rtsp://198.51.100.7', 'url = "ftp://admin:hunter2@198.51.100.7')
    bad = bad.replace('password = "s3cr#t"', "password = 12345")
    with pytest.raises(ConfigError) as info:
        parse_config(bad)
    text = str(info.value)
    assert "hunter2" not in text and "12345" not in text
    assert "cameras[0].password: Input should be a valid string (got ***)" in text
    assert "'ftp://admin:***@198.51.100.7:554/Streaming/Channels/101'" in text


def test_duplicate_ids_and_two_password_sources_are_refused(tmp_path: Path) -> None:
    twice = GOOD + GOOD[GOOD.index("[[cameras]]") :]
    with pytest.raises(ConfigError, match="camera id 'song-cau-01' is used twice"):
        parse_config(twice)
    both = GOOD.replace('password = "s3cr#t"', 'password = "a"\npassword_file = "/x"')
    with pytest.raises(ConfigError, match="give either password or password_file, not both"):
        parse_config(both)


def test_password_file_and_url_userinfo(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("p@ss:/w%rd\n", encoding="utf-8")
    cfg = parse_config(GOOD.replace('password = "s3cr#t"', f'password_file = "{secret}"'))
    assert cfg.cameras[0].credentials() == ("admin", "p@ss:/w%rd")
    in_url = GOOD.replace('username = "admin"\npassword = "s3cr#t"\n', "").replace(
        "rtsp://198", "rtsp://ad%40min:p%3Ass@198"
    )
    assert parse_config(in_url).cameras[0].credentials() == ("ad@min", "p:ss")
    missing = parse_config(GOOD.replace('password = "s3cr#t"', 'password_file = "/nonexistent"'))
    with pytest.raises(ConfigError, match="camera song-cau-01: cannot read password_file"):
        missing.cameras[0].credentials()


def test_not_toml_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid TOML"):
        parse_config("[storage\n")
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "absent.toml")


def test_check_config_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.toml"
    good.write_text(GOOD, encoding="utf-8")
    assert main(["check-config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "OK" in out and "song-cau-01" in out and "s3cr#t" not in out
    assert main(["check-config", "--json", str(good)]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert parsed["ok"] is True and parsed["cameras"][0]["id"] == "song-cau-01"
    bad = tmp_path / "bad.toml"
    bad.write_text(GOOD.replace('transport = "tcp"', 'transport = "x"'), encoding="utf-8")
    assert main(["check-config", str(bad)]) == 2
    assert "cameras[0].transport" in capsys.readouterr().err
    assert main(["check-config", "--json", str(bad)]) == 2
    assert json.loads(capsys.readouterr().out)["ok"] is False


def test_redact_url() -> None:
    assert redact_url("rtsp://admin:p%40ss@10.0.0.1:554/x") == "rtsp://admin:***@10.0.0.1:554/x"
    assert redact_url("rtsp://10.0.0.1/x") == "rtsp://10.0.0.1/x"
    assert redact_url("rtsp://u:p@[::1]:8554/a") == "rtsp://u:***@[::1]:8554/a"
    assert redact_url("rtsp://u:p@[bad") == "<url>"


def test_backoff_doubles_to_the_cap_with_jitter() -> None:
    rng = random.Random(7)
    for failures, ceiling in [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (50, 60.0)]:
        delays = [backoff_delay_s(failures, 1.0, 60.0, rng) for _ in range(200)]
        assert all(ceiling / 2 <= d <= ceiling for d in delays)
        assert max(delays) - min(delays) > ceiling / 4  # jittered, not one fixed value


def test_journal_lines_carry_priority_prefixes() -> None:
    rec = logging.LogRecord("nvr", logging.WARNING, __file__, 1, "camera=a x\nmore", None, None)
    assert JournalFormatter("%(message)s").format(rec) == "<4>camera=a x\n<4>more"


def test_onvif_cameras_need_an_onvif_address_or_a_url_not_both() -> None:
    onvif = GOOD.replace(
        'url = "rtsp://198.51.100.7:554/Streaming/Channels/101"',
        'onvif = "http://198.51.100.7:8000"\nprofile = "sub"',
    )
    cam = parse_config(onvif).cameras[0]
    assert cam.url is None and cam.onvif == "http://198.51.100.7:8000" and cam.profile == "sub"
    assert cam.safe_url == "http://198.51.100.7:8000 (ONVIF, profile sub)"
    both = GOOD.replace('transport = "tcp"', 'transport = "tcp"\nonvif = "http://h"')
    with pytest.raises(ConfigError, match=r"give either url \(RTSP\) or onvif"):
        parse_config(both)
    with_creds = onvif.replace("http://198.51.100.7:8000", "http://admin:x@198.51.100.7")
    with pytest.raises(ConfigError, match=r"cameras\[0\]\.onvif: must not carry credentials"):
        parse_config(with_creds)
