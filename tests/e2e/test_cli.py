"""The real ``correo`` command in a subprocess, on a temp dir."""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

CORREO = [sys.executable, "-m", "correo"]
CHEAP = "\n[auth]\nargon2_time_cost = 1\nargon2_memory_cost = 8\nargon2_parallelism = 1\n"


def correo(
    *args: str, cfg: Path | None = None, stdin: str = "", check: bool = True
) -> subprocess.CompletedProcess[str]:
    cmd = [*CORREO, *(["-c", str(cfg)] if cfg else []), *args]
    p = subprocess.run(
        cmd,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CORREO_CONFIG": ""},
    )
    if check and p.returncode != 0:
        raise AssertionError(f"{cmd} failed ({p.returncode}): {p.stdout}{p.stderr}")
    return p


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def inst(tmp_path: Path) -> Path:
    """An initialised installation with cheap argon2 (tests only)."""
    d = tmp_path / "inst"
    out = correo("init", str(d), "--hostname", "mx.example.test", "--domain", "example.test")
    assert "domain example.test added" in out.stdout
    cfg = d / "correo.toml"
    cfg.write_text(cfg.read_text() + CHEAP)
    return cfg


def test_init_writes_config_cert_and_database(tmp_path: Path) -> None:
    d = tmp_path / "x"
    out = correo("init", str(d), "--domain", "example.test", "--demo-user", "demo")
    assert (d / "correo.toml").is_file()
    assert (d / "tls" / "cert.pem").read_bytes().startswith(b"-----BEGIN CERTIFICATE")
    assert oct((d / "tls" / "key.pem").stat().st_mode & 0o777) == "0o600"
    assert (d / "data" / "correo.db").is_file()
    assert "user demo@example.test added; password: " in out.stdout
    assert "alias postmaster@example.test -> demo@example.test added" in out.stdout
    again = correo("init", str(d), check=False)
    assert again.returncode != 0
    assert "already exists" in again.stderr
    assert len(again.stderr.strip().splitlines()) == 1


def test_user_lifecycle(inst: Path) -> None:
    out = correo(
        "user",
        "add",
        "alice@example.test",
        "--password-stdin",
        "--quota",
        "2G",
        cfg=inst,
        stdin="pw-alice\n",
    )
    assert "user alice@example.test added" in out.stdout
    listing = correo("user", "list", cfg=inst).stdout.splitlines()
    assert listing[0].split() == ["ADDRESS", "QUOTA", "USED", "STATE", "CREATED"]
    row = next(line for line in listing if line.startswith("alice@example.test"))
    assert "2.0G" in row and "active" in row

    dup = correo(
        "user", "add", "ALICE@example.test", "--password-stdin", cfg=inst, stdin="x\n", check=False
    )
    assert dup.returncode != 0 and len(dup.stderr.strip().splitlines()) == 1

    foreign = correo(
        "user", "add", "bob@elsewhere.test", "--password-stdin", cfg=inst, stdin="x\n", check=False
    )
    assert foreign.returncode != 0 and "elsewhere.test" in foreign.stderr

    correo("user", "disable", "alice@example.test", cfg=inst)
    assert "disabled" in correo("user", "list", cfg=inst).stdout
    correo("user", "enable", "alice@example.test", cfg=inst)
    correo("user", "passwd", "alice@example.test", "--password-stdin", cfg=inst, stdin="n\n")
    correo("user", "quota", "alice@example.test", "0", cfg=inst)
    assert "unlimited" in correo("user", "list", cfg=inst).stdout

    refused = correo("domain", "remove", "example.test", cfg=inst, check=False)
    assert refused.returncode != 0
    correo("user", "remove", "alice@example.test", cfg=inst)
    assert "alice" not in correo("user", "list", cfg=inst).stdout


def test_aliases_and_domains(inst: Path) -> None:
    correo("domain", "add", "Example.ORG", cfg=inst)
    correo("user", "add", "a@example.org", "--password-stdin", cfg=inst, stdin="p\n")
    correo("alias", "add", "sales@example.org", "a@example.org", "x@remote.test", cfg=inst)
    correo("alias", "add", "@example.org", "a@example.org", cfg=inst)
    out = correo("alias", "list", cfg=inst).stdout
    assert "sales@example.org" in out and "x@remote.test" in out and "@example.org" in out
    domains = correo("domain", "list", cfg=inst).stdout
    assert "example.org" in domains and "example.test" in domains
    bad = correo("alias", "add", "x@nowhere.test", "a@example.org", cfg=inst, check=False)
    assert bad.returncode != 0
    correo("domain", "remove", "example.org", "--force", cfg=inst)
    assert "example.org" not in correo("domain", "list", cfg=inst).stdout


def test_bad_config_stops_with_one_line(tmp_path: Path) -> None:
    cfg = tmp_path / "correo.toml"
    cfg.write_text('[limits]\nmax_message_size = "lots"\n')
    for args in (("serve",), ("user", "list")):
        p = correo(*args, cfg=cfg, check=False)
        assert p.returncode != 0
        lines = p.stderr.strip().splitlines()
        assert len(lines) == 1, p.stderr
        assert "limits.max_message_size" in lines[0] and str(cfg) in lines[0]


def test_backup_is_a_consistent_copy(inst: Path, tmp_path: Path) -> None:
    correo("user", "add", "alice@example.test", "--password-stdin", cfg=inst, stdin="p\n")
    dest = tmp_path / "bk"
    correo("backup", str(dest), cfg=inst)
    db = sqlite3.connect(dest / "correo.db")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


def test_serve_prints_listeners_and_stops_on_sigterm(inst: Path) -> None:
    cfg = inst
    text = cfg.read_text()
    for port in (2525, 2587, 2465, 2110, 2995, 2143, 2993):  # init's defaults: free ones here
        text = text.replace(f'"127.0.0.1:{port}"', f'"127.0.0.1:{free_port()}"')
    cfg.write_text(text)
    proc = subprocess.Popen(
        [*CORREO, "-c", str(cfg), "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 20
        out = ""
        assert proc.stdout is not None
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            out += line
            if "Ctrl-C stops" in line or not line:
                break
        assert "serving mx.example.test" in out, out
        listed = [ln for ln in out.splitlines() if ln.startswith("  ")]
        assert listed, out
        for ln in listed:
            host, _, rest = ln.split()[1].partition(":")
            with socket.create_connection((host, int(rest)), timeout=5) as s:
                s.settimeout(5)
                if ln.split()[0] not in ("submissions", "pop3s", "imaps"):
                    assert s.recv(100), ln
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _python_usable_by_nobody() -> bool:
    """A Python installed under /root (pyenv) cannot import its stdlib after dropping to
    nobody; production installs (/usr, /opt) can."""
    r = subprocess.run(
        [
            "runuser",
            "-u",
            "nobody",
            "--",
            sys.executable,
            "-c",
            "import importlib.readers, shutil, correo.store.sqlite",
        ],
        capture_output=True,
        cwd="/",
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
    )
    return r.returncode == 0


@pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root")
def test_serve_as_root_drops_to_server_user(tmp_path: Path) -> None:
    if not _python_usable_by_nobody():
        pytest.skip(f"{sys.executable} is not readable by user nobody on this machine")
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    root = Path(tempfile.mkdtemp(prefix="correo-drop-"))  # traversable by nobody
    try:
        os.chmod(root, 0o755)
        correo("init", str(root / "i"), "--domain", "example.test")
        cfg = root / "i" / "correo.toml"
        text = cfg.read_text() + CHEAP + '\n[server]\nuser = "nobody"\n'
        for port in (2525, 2587, 2465, 2110, 2995, 2143, 2993):
            text = text.replace(f'"127.0.0.1:{port}"', f'"127.0.0.1:{free_port()}"')
        cfg.write_text(text)
        for p in [root / "i", *(root / "i").rglob("*")]:
            os.chown(p, nobody.pw_uid, nobody.pw_gid)
        proc = subprocess.Popen(
            [*CORREO, "-c", str(cfg), "serve"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            out = ""
            deadline = time.monotonic() + 20
            while "Ctrl-C stops" not in out and time.monotonic() < deadline:
                line = proc.stdout.readline()
                if not line:
                    break
                out += line
            assert "Ctrl-C stops" in out, out + (proc.stderr.read() if proc.poll() else "")
            status = Path(f"/proc/{proc.pid}/status").read_text()
            uid_line = next(ln for ln in status.splitlines() if ln.startswith("Uid:"))
            assert uid_line.split()[1:] == [str(nobody.pw_uid)] * 4
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    finally:
        shutil.rmtree(root, ignore_errors=True)
