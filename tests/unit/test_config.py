"""Configuration: defaults, units, and one-line errors naming file, key and reason."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from correo import config
from correo.config import ConfigError, Settings, parse_duration, parse_size

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "correo.example.toml"


def load_text(tmp_path: Path, text: str) -> Settings:
    p = tmp_path / "correo.toml"
    p.write_text(text)
    return config.load(p)


def test_example_file_loads_and_matches_defaults(tmp_path: Path) -> None:
    s = config.load(EXAMPLE)
    d = config.loads("", EXAMPLE)
    for section in ("server", "limits", "auth", "smtp", "queue", "pop3"):
        assert getattr(s, section) == getattr(d, section), section
    assert s.storage.backend == "sqlite"


def test_example_documents_every_key() -> None:
    """Every settings field appears (set or commented) in correo.example.toml."""
    text = EXAMPLE.read_text()
    data = tomllib.loads(text)
    skip = {"path", "names", "routes", "cert", "key", "blobs", "blob_dir"}
    for f in dataclasses.fields(Settings):
        if f.name in skip:
            continue
        if dataclasses.is_dataclass(f.default_factory() if callable(f.default_factory) else None):
            sub = f.default_factory()  # type: ignore[misc]
            for g in dataclasses.fields(sub):
                if g.name in skip:
                    continue
                assert g.name in data.get(f.name, {}) or re.search(
                    rf"^#?\s*{g.name} =", text, re.M
                ), f"{f.name}.{g.name} undocumented"
        else:
            assert f.name in data, f.name


def test_relative_paths_resolve_against_config_folder(tmp_path: Path) -> None:
    s = load_text(tmp_path, 'data_dir = "d"\n[tls]\ncert = "c.pem"\nkey = "k.pem"\n')
    assert s.data_dir == tmp_path / "d"
    assert s.tls.cert == tmp_path / "c.pem"
    default = load_text(tmp_path, "")
    assert default.data_dir == tmp_path / "data"


def test_units() -> None:
    assert parse_size("25M") == 25 * 1024 * 1024
    assert parse_size("512k") == 512 * 1024
    assert parse_size(1000) == 1000
    assert parse_size("1G") == 1024**3
    assert parse_duration("90s") == 90
    assert parse_duration("5m") == 300
    assert parse_duration("4h") == 4 * 3600
    assert parse_duration("5d") == 5 * 86400
    assert parse_duration(7) == 7.0
    for bad in ("25X", "", "-1", True, [1]):
        with pytest.raises(ValueError):
            parse_size(bad)
    for bad in ("5 minutes", "x", -3, False):
        with pytest.raises(ValueError):
            parse_duration(bad)


def test_listen_and_routes(tmp_path: Path) -> None:
    s = load_text(
        tmp_path,
        '[listen]\nsmtp = ["127.0.0.1:25", "[::1]:25"]\nimap = []\n'
        '[relay.routes]\n"remote.test" = "127.0.0.1:2626"\n'
        '"*" = { host = "smarthost.example", port = 587, username = "u", tls = "require" }\n',
    )
    assert [str(a) for a in s.listen.smtp] == ["127.0.0.1:25", "[::1]:25"]
    assert s.listen.imap == ()
    assert s.relay.routes["remote.test"].port == 2626
    assert s.relay.routes["*"].tls == "require"


@pytest.mark.parametrize(
    ("text", "key", "reason"),
    [
        ("bogus = 1\n", "bogus", "unknown key"),
        ("[limits]\nmax_mesage_size = 1\n", "limits.max_mesage_size", "unknown key"),
        ('[limits]\nmax_message_size = "25X"\n', "limits.max_message_size", "size"),
        ('[limits]\nsmtp_timeout = "1m"\n', "limits.smtp_timeout", "RFC minimum is 5m"),
        ('[limits]\nimap_timeout = "10m"\n', "limits.imap_timeout", "RFC minimum is 30m"),
        ('[listen]\nsmtp = "127.0.0.1:25"\n', "listen.smtp", "expected a list"),
        ('[listen]\nsmtp = ["127.0.0.1:99999"]\n', "listen.smtp", "out of range"),
        ('[storage]\nbackend = "mysql"\n', "storage.backend", "expected one of"),
        ('[storage]\nbackend = "postgresql"\n', "storage.url", "needs a url"),
        ('[smtp]\ntrusted_networks = ["10.0.0.0/33"]\n', "smtp.trusted_networks", "network"),
        ('[listen]\nimaps = ["127.0.0.1:993"]\n', "tls.cert", "certificate"),
        ("[queue]\nretry_intervals = []\n", "queue.retry_intervals", "at least one"),
        ('hostname = "bad host"\n', "hostname", "host name"),
        ("[auth]\nmax_failures = -1\n", "auth.max_failures", "negative"),
        ('[relay.routes]\n"x.test" = { port = 25 }\n', "relay.routes.x.test", "needs host"),
        ("[limits\n", "", "TOML syntax"),
        ('[smtp]\nworkers = "many"\n', "smtp.workers", "expected an integer"),
        ("[smtp]\nworkers = 65\n", "smtp.workers", "at most 64"),
    ],
)
def test_bad_values_name_file_key_reason(tmp_path: Path, text: str, key: str, reason: str) -> None:
    with pytest.raises(ConfigError) as e:
        load_text(tmp_path, text)
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith(str(tmp_path / "correo.toml") + ": ")
    if key:
        assert f": {key}: " in msg
    assert reason in msg


def test_smtp_workers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: {0, 1})
    assert load_text(tmp_path, "").smtp.workers == 2  # "auto" by default
    assert load_text(tmp_path, "[smtp]\nworkers = 0\n").smtp.workers == 0
    assert load_text(tmp_path, "[smtp]\nworkers = 3\n").smtp.workers == 3
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: {0, 1, 2, 3})
    assert load_text(tmp_path, '[smtp]\nworkers = "auto"\n').smtp.workers == 4
    monkeypatch.setattr(config.os, "sched_getaffinity", lambda _pid: {5})  # one CPU: none
    assert load_text(tmp_path, '[smtp]\nworkers = "auto"\n').smtp.workers == 0


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "nope.toml")


def test_config_path_precedence(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("CORREO_CONFIG", "/etc/correo/env.toml")
    assert config.config_path("x.toml") == Path("x.toml")
    assert config.config_path(None) == Path("/etc/correo/env.toml")
    monkeypatch.delenv("CORREO_CONFIG")
    assert config.config_path(None) == Path("correo.toml")
    (tmp_path / "correo-data").mkdir()
    (tmp_path / "correo-data" / "correo.toml").write_text("")
    assert config.config_path(None) == Path("correo-data/correo.toml")
    (tmp_path / "correo.toml").write_text("")
    assert config.config_path(None) == Path("correo.toml")


def test_settings_are_frozen(tmp_path: Path) -> None:
    s = load_text(tmp_path, "")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.hostname = "x"  # type: ignore[misc]
