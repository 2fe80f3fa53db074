"""Configuration: one TOML file loaded into frozen, typed settings.

Every key has a default (documented in ``correo.example.toml``). An unknown key or a bad
value raises :class:`ConfigError` whose message is one line naming the file, the key and
the reason, e.g. ``correo.toml: limits.max_message_size: expected a size such as "25M"``.

Sizes are an integer of bytes or a string with a unit (``"25M"``, ``"512K"``, ``"1G"``);
durations are seconds or a string with a unit (``"90s"``, ``"5m"``, ``"4h"``, ``"5d"``).
Relative paths resolve against the folder of the config file.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

DEFAULT_CONFIG_NAME = "correo.toml"


class ConfigError(Exception):
    """A configuration problem, already phrased as one line for the operator."""


# --------------------------------------------------------------------------- values

_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "M": 1024**2, "G": 1024**3}
_DURATION_UNITS = {"": 1, "S": 1, "M": 60, "H": 3600, "D": 86400, "W": 7 * 86400}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMG]?)(?:I?B)?\s*$", re.IGNORECASE)
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([SMHDW]?)\s*$", re.IGNORECASE)


def parse_size(value: object) -> int:
    """``25M`` → 26214400. Integers are bytes."""
    if isinstance(value, bool):
        raise ValueError('expected a size such as 26214400 or "25M"')
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        m = _SIZE_RE.match(value)
        if m:
            return int(float(m.group(1)) * _SIZE_UNITS[m.group(2).upper()])
    raise ValueError('expected a size such as 26214400 or "25M"')


def parse_duration(value: object) -> float:
    """``"5m"`` → 300.0. Numbers are seconds."""
    if isinstance(value, bool):
        raise ValueError('expected a duration such as 300 or "5m"')
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        return float(value)
    if isinstance(value, str):
        m = _DURATION_RE.match(value)
        if m:
            return float(m.group(1)) * _DURATION_UNITS[m.group(2).upper()]
    raise ValueError('expected a duration such as 300 or "5m", "4h", "5d"')


def format_duration(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return f"{seconds:g}s"


@dataclass(frozen=True, slots=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def is_loopback(self) -> bool:
        if self.host in ("localhost",):
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def auto_workers() -> int:
    """``[smtp] workers = "auto"``: one SMTP worker process per CPU, none on one CPU
    (there a worker would only add a hop)."""
    try:
        cpus = len(os.sched_getaffinity(0))  # the CPUs this process may use (cgroups, taskset)
    except AttributeError:  # not on Linux
        cpus = os.cpu_count() or 1
    return min(cpus, 64) if cpus > 1 else 0


def parse_hostport(value: object, default_port: int | None = None) -> HostPort:
    """``"127.0.0.1:25"``, ``"[::1]:25"``, ``"mx.example.net:2525"``."""
    if not isinstance(value, str) or not value.strip():
        raise ValueError('expected "host:port"')
    text = value.strip()
    m = re.match(r"^\[([0-9A-Fa-f:.]+)\](?::(\d+))?$", text)
    if m:
        host, port_s = m.group(1), m.group(2)
    elif text.count(":") == 1:
        host, port_s = text.split(":")
    elif ":" not in text:
        host, port_s = text, None
    else:
        raise ValueError(f'expected "host:port" (write IPv6 as "[::1]:25"), got {value!r}')
    if port_s is None:
        if default_port is None:
            raise ValueError(f'expected "host:port", got {value!r}')
        port = default_port
    else:
        port = int(port_s)
    if not 0 <= port <= 65535:
        raise ValueError(f"port {port} is out of range")
    if not host:
        raise ValueError(f'expected "host:port", got {value!r}')
    return HostPort(host, port)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True, slots=True)
class ServerSettings:
    user: str = ""
    """Drop to this unprivileged user after binding when started as root."""
    log_level: str = "INFO"
    shutdown_grace: float = 10.0
    """Seconds to let in-flight commands finish on SIGTERM/SIGINT."""


@dataclass(frozen=True, slots=True)
class ListenSettings:
    smtp: tuple[HostPort, ...] = ()
    submission: tuple[HostPort, ...] = ()
    submissions: tuple[HostPort, ...] = ()
    pop3: tuple[HostPort, ...] = ()
    pop3s: tuple[HostPort, ...] = ()
    imap: tuple[HostPort, ...] = ()
    imaps: tuple[HostPort, ...] = ()
    proxy_protocol_from: tuple[str, ...] = ()
    """Networks (CIDR) of TCP load balancers allowed to send a PROXY protocol header."""


@dataclass(frozen=True, slots=True)
class CertPair:
    cert: Path
    key: Path


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert: Path | None = None
    key: Path | None = None
    names: Mapping[str, CertPair] = field(default_factory=dict)
    """Per hosted name certificates, chosen by SNI (``[tls.names]``)."""
    min_version: str = "1.2"


@dataclass(frozen=True, slots=True)
class StorageSettings:
    backend: str = "sqlite"
    url: str = ""
    blobs: str = ""
    """Where message bodies live: "files" (default for sqlite) or "database" (default for
    postgresql); "files" with a shared ``blob_dir`` also works across nodes."""
    blob_dir: Path | None = None
    inline_threshold: int = 8192
    """Bodies up to this size live inline in the database (saves an fsync per message)."""
    pool_size: int = 10


@dataclass(frozen=True, slots=True)
class LimitSettings:
    max_message_size: int = 25 * 1024**2
    max_recipients: int = 100
    max_connections: int = 10000
    max_connections_per_ip: int = 50
    max_line_length: int = 65536
    """Longest protocol line (IMAP command line, for example) outside literals."""
    max_literal_size: int = 65536
    """Largest IMAP literal other than an APPEND message."""
    max_errors: int = 20
    """Protocol errors (SMTP 5xx, IMAP BAD) before the session is closed."""
    login_timeout: float = 60.0
    smtp_timeout: float = 300.0
    pop3_timeout: float = 600.0
    imap_timeout: float = 1800.0
    output_buffer: int = 256 * 1024
    """Bytes queued to a slow client before the session stops reading its commands."""


@dataclass(frozen=True, slots=True)
class AuthSettings:
    max_failures: int = 5
    """Failed logins per client IP or per account before cooling off."""
    failure_window: float = 600.0
    lockout: float = 300.0
    cache_ttl: float = 60.0
    """How long a verified credential is cached (like Dovecot's auth_cache)."""
    workers: int = 2
    argon2_time_cost: int = 3
    argon2_memory_cost: int = 65536
    """KiB. Defaults follow RFC 9106's second recommended option (64 MiB, t=3, p=4)."""
    argon2_parallelism: int = 4
    plaintext_on_loopback: bool = True
    """Allow passwords without TLS on loopback listeners (never on other addresses)."""


@dataclass(frozen=True, slots=True)
class SmtpSettings:
    trusted_networks: tuple[str, ...] = ()
    vrfy: bool = False
    require_sender_ownership: bool = True
    hourly_messages: int = 500
    hourly_recipients: int = 2000
    postmaster: str = ""
    """Fallback address for postmaster@ of a domain that has no postmaster account/alias."""
    max_received_headers: int = 100
    banner: str = "ESMTP correo"
    workers: int = field(default_factory=auto_workers)
    """Processes serving ``[listen] smtp`` (``correo.workers``); 0: the main process.
    Default "auto": one per CPU, none on a single CPU."""


@dataclass(frozen=True, slots=True)
class RelayRoute:
    host: str
    port: int = 25
    username: str = ""
    password_file: Path | None = None
    tls: str = "opportunistic"


@dataclass(frozen=True, slots=True)
class RelaySettings:
    require_tls: bool = False
    routes: Mapping[str, RelayRoute] = field(default_factory=dict)
    connect_timeout: float = 300.0
    max_connections: int = 50
    max_connections_per_domain: int = 10
    srs_secret: str = ""
    """Secret for SRS rewriting of forwarded mail; generated by ``correo init``."""


@dataclass(frozen=True, slots=True)
class QueueSettings:
    retry_intervals: tuple[float, ...] = (300, 600, 1200, 2400, 3600, 7200, 14400)
    expire_after: float = 5 * 86400
    delay_warning_after: float = 4 * 3600
    lease: float = 60.0
    jitter: float = 0.1
    max_alias_depth: int = 10


@dataclass(frozen=True, slots=True)
class Pop3Settings:
    expire: str = "NEVER"
    login_delay: float = 0


@dataclass(frozen=True, slots=True)
class Settings:
    path: Path
    hostname: str = "localhost"
    data_dir: Path = Path("data")
    server: ServerSettings = field(default_factory=ServerSettings)
    listen: ListenSettings = field(default_factory=ListenSettings)
    tls: TlsSettings = field(default_factory=TlsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    smtp: SmtpSettings = field(default_factory=SmtpSettings)
    relay: RelaySettings = field(default_factory=RelaySettings)
    queue: QueueSettings = field(default_factory=QueueSettings)
    pop3: Pop3Settings = field(default_factory=Pop3Settings)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "correo.db"

    @property
    def blob_dir(self) -> Path:
        return self.storage.blob_dir or (self.data_dir / "blobs")


# --------------------------------------------------------------------------- loading

Conv = Callable[[Any, str], Any]


def _str(v: Any, _key: str) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a string")
    return v


def _bool(v: Any, _key: str) -> bool:
    if not isinstance(v, bool):
        raise ValueError("expected true or false")
    return v


def _int(v: Any, _key: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise ValueError("expected an integer")
    if v < 0:
        raise ValueError("cannot be negative")
    return v


def _workers(v: Any, key: str) -> int:
    """A process count, or "auto" (:func:`auto_workers`)."""
    if v == "auto":
        return auto_workers()
    n = _int(v, key)
    if n > 64:
        raise ValueError('at most 64 (or "auto")')
    return n


def _size(v: Any, _key: str) -> int:
    return parse_size(v)


def _dur(v: Any, _key: str) -> float:
    return parse_duration(v)


def _choice(*options: str) -> Conv:
    def conv(v: Any, _key: str) -> str:
        if v not in options:
            raise ValueError("expected one of " + ", ".join(repr(o) for o in options))
        return str(v)

    return conv


def _list(item: Conv) -> Conv:
    def conv(v: Any, key: str) -> tuple[Any, ...]:
        if not isinstance(v, list):
            raise ValueError("expected a list")
        return tuple(item(x, key) for x in v)

    return conv


def _hostport(v: Any, _key: str) -> HostPort:
    return parse_hostport(v)


def _network(v: Any, _key: str) -> str:
    if not isinstance(v, str):
        raise ValueError("expected a network such as 192.0.2.0/24")
    try:
        return str(ipaddress.ip_network(v, strict=False))
    except ValueError as exc:
        raise ValueError(f"{v!r} is not a network such as 192.0.2.0/24") from exc


class _Loader:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.base = path.parent

    def fail(self, key: str, reason: str) -> ConfigError:
        return ConfigError(f"{self.path}: {key}: {reason}")

    def path_value(self, v: Any, key: str) -> Path:
        if not isinstance(v, str) or not v:
            raise ValueError("expected a path")
        p = Path(v).expanduser()
        return p if p.is_absolute() else (self.base / p)

    def section(self, data: Any, prefix: str, spec: Mapping[str, Conv]) -> dict[str, Any]:
        if not isinstance(data, dict):
            raise self.fail(prefix, "expected a table")
        out: dict[str, Any] = {}
        for key, value in data.items():
            full = f"{prefix}.{key}" if prefix else key
            conv = spec.get(key)
            if conv is None:
                raise self.fail(full, "unknown key")
            try:
                out[key] = conv(value, full)
            except ConfigError:
                raise
            except (ValueError, TypeError) as exc:
                raise self.fail(full, str(exc)) from None
        return out

    def route(self, v: Any, key: str) -> RelayRoute:
        if isinstance(v, str):
            hp = parse_hostport(v, default_port=25)
            return RelayRoute(host=hp.host, port=hp.port)
        spec: dict[str, Conv] = {
            "host": _str,
            "port": _int,
            "username": _str,
            "password_file": self.path_value,
            "tls": _choice("require", "opportunistic", "none"),
        }
        values = self.section(v, key, spec)
        if "host" not in values:
            raise self.fail(key, "a route table needs host")
        return RelayRoute(**values)

    def certpair(self, v: Any, key: str) -> CertPair:
        values = self.section(v, key, {"cert": self.path_value, "key": self.path_value})
        if set(values) != {"cert", "key"}:
            raise self.fail(key, "needs both cert and key")
        return CertPair(**values)

    def load(self, data: dict[str, Any]) -> Settings:
        p = self.path_value
        sections: dict[str, tuple[type, dict[str, Conv]]] = {
            "server": (
                ServerSettings,
                {
                    "user": _str,
                    "log_level": _choice("DEBUG", "INFO", "WARNING", "ERROR"),
                    "shutdown_grace": _dur,
                },
            ),
            "listen": (
                ListenSettings,
                {
                    name: _list(_hostport)
                    for name in (
                        "smtp",
                        "submission",
                        "submissions",
                        "pop3",
                        "pop3s",
                        "imap",
                        "imaps",
                    )
                }
                | {"proxy_protocol_from": _list(_network)},
            ),
            "tls": (
                TlsSettings,
                {
                    "cert": p,
                    "key": p,
                    "min_version": _choice("1.2", "1.3"),
                    "names": lambda v, k: self.names(v, k),
                },
            ),
            "storage": (
                StorageSettings,
                {
                    "backend": _choice("sqlite", "postgresql"),
                    "url": _str,
                    "blobs": _choice("files", "database"),
                    "blob_dir": p,
                    "inline_threshold": _size,
                    "pool_size": _int,
                },
            ),
            "limits": (
                LimitSettings,
                {
                    "max_message_size": _size,
                    "max_recipients": _int,
                    "max_connections": _int,
                    "max_connections_per_ip": _int,
                    "max_line_length": _size,
                    "max_literal_size": _size,
                    "max_errors": _int,
                    "login_timeout": _dur,
                    "smtp_timeout": _dur,
                    "pop3_timeout": _dur,
                    "imap_timeout": _dur,
                    "output_buffer": _size,
                },
            ),
            "auth": (
                AuthSettings,
                {
                    "max_failures": _int,
                    "failure_window": _dur,
                    "lockout": _dur,
                    "cache_ttl": _dur,
                    "workers": _int,
                    "argon2_time_cost": _int,
                    "argon2_memory_cost": _int,
                    "argon2_parallelism": _int,
                    "plaintext_on_loopback": _bool,
                },
            ),
            "smtp": (
                SmtpSettings,
                {
                    "trusted_networks": _list(_network),
                    "vrfy": _bool,
                    "require_sender_ownership": _bool,
                    "hourly_messages": _int,
                    "hourly_recipients": _int,
                    "postmaster": _str,
                    "max_received_headers": _int,
                    "banner": _str,
                    "workers": _workers,
                },
            ),
            "relay": (
                RelaySettings,
                {
                    "require_tls": _bool,
                    "routes": lambda v, k: self.routes(v, k),
                    "connect_timeout": _dur,
                    "max_connections": _int,
                    "max_connections_per_domain": _int,
                    "srs_secret": _str,
                },
            ),
            "queue": (
                QueueSettings,
                {
                    "retry_intervals": _list(_dur),
                    "expire_after": _dur,
                    "delay_warning_after": _dur,
                    "lease": _dur,
                    "jitter": _jitter,
                    "max_alias_depth": _int,
                },
            ),
            "pop3": (Pop3Settings, {"expire": _pop3_expire, "login_delay": _dur}),
        }
        top = self.section(
            {k: v for k, v in data.items() if k not in sections},
            "",
            {"hostname": _hostname, "data_dir": p},
        )
        kwargs: dict[str, Any] = dict(top)
        for name, (cls, spec) in sections.items():
            if name in data:
                kwargs[name] = cls(**self.section(data[name], name, spec))
        settings = Settings(path=self.path, **kwargs)
        if "data_dir" not in top:
            settings = _replace(settings, data_dir=self.base / "data")
        self.check(settings)
        return settings

    def names(self, v: Any, key: str) -> dict[str, CertPair]:
        if not isinstance(v, dict):
            raise ValueError("expected a table of name = { cert, key }")
        return {n.lower(): self.certpair(pair, f"{key}.{n}") for n, pair in v.items()}

    def routes(self, v: Any, key: str) -> dict[str, RelayRoute]:
        if not isinstance(v, dict):
            raise ValueError('expected a table of "domain" = "host:port"')
        return {d.lower(): self.route(r, f"{key}.{d}") for d, r in v.items()}

    def check(self, s: Settings) -> None:
        lim = s.limits
        minimums = {"smtp_timeout": 300.0, "pop3_timeout": 600.0, "imap_timeout": 1800.0}
        for key, minimum in minimums.items():
            if getattr(lim, key) < minimum:
                raise self.fail(
                    f"limits.{key}",
                    f"the RFC minimum is {format_duration(minimum)}",
                )
        if s.storage.backend == "postgresql" and not s.storage.url:
            raise self.fail("storage.url", 'backend "postgresql" needs a url')
        if (s.tls.cert is None) != (s.tls.key is None):
            raise self.fail(
                "tls.cert" if s.tls.cert is None else "tls.key", "cert and key go together"
            )
        tls_listeners = s.listen.submissions or s.listen.pop3s or s.listen.imaps
        if tls_listeners and s.tls.cert is None:
            raise self.fail("tls.cert", "implicit-TLS listeners need a certificate")
        if not s.queue.retry_intervals:
            raise self.fail("queue.retry_intervals", "needs at least one interval")


def _jitter(v: Any, _key: str) -> float:
    if isinstance(v, bool) or not isinstance(v, int | float) or not 0 <= v <= 1:
        raise ValueError("expected a fraction between 0 and 1")
    return float(v)


def _pop3_expire(v: Any, _key: str) -> str:
    if v == "NEVER":
        return "NEVER"
    if isinstance(v, int) and not isinstance(v, bool) and v >= 0:
        return str(v)
    raise ValueError('expected "NEVER" or a number of days')


_HOSTNAME_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.?)+$")


def _hostname(v: Any, _key: str) -> str:
    if not isinstance(v, str) or not _HOSTNAME_RE.match(v):
        raise ValueError("expected a host name such as mail.example.com")
    return v.rstrip(".").lower()


def _replace(obj: Any, **changes: Any) -> Any:
    values = {f.name: getattr(obj, f.name) for f in fields(obj)}
    values.update(changes)
    return type(obj)(**values)


def replace(obj: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` for slotted frozen settings (used by tests)."""
    return _replace(obj, **changes)


DEMO_CONFIG = Path("correo-data") / DEFAULT_CONFIG_NAME
"""Where ``make run`` puts its installation; found when ./correo.toml does not exist."""


def config_path(explicit: str | os.PathLike[str] | None) -> Path:
    """The config file: ``-c`` first, then ``$CORREO_CONFIG``, then ``./correo.toml``,
    then ``./correo-data/correo.toml`` (the demo installation ``make run`` creates)."""
    if explicit:
        return Path(explicit)
    env = os.environ.get("CORREO_CONFIG")
    if env:
        return Path(env)
    default = Path(DEFAULT_CONFIG_NAME)
    if not default.exists() and DEMO_CONFIG.exists():
        return DEMO_CONFIG
    return default


def load(path: str | os.PathLike[str]) -> Settings:
    """Load and validate a config file; every problem is one :class:`ConfigError` line."""
    p = Path(path).absolute()
    try:
        raw = p.read_bytes()
    except FileNotFoundError:
        raise ConfigError(f"{p}: no such file (run `correo init` to create one)") from None
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror}") from None
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{p}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: TOML syntax: {exc}") from None
    return _Loader(p).load(data)


def loads(text: str, path: str | os.PathLike[str] = "correo.toml") -> Settings:
    """Load settings from TOML text (the path only names the file and the base folder)."""
    p = Path(path).absolute()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{p}: TOML syntax: {exc}") from None
    return _Loader(p).load(data)
