"""Signed update bundles: verification, atomic switch, health gate and rollback, busy tills."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.till import Till
from appliance.update import Installer, UpdateBusy, UpdateError, build_bundle, load_public_keys, trading, verify_bundle
from tests.conftest import open_shift


def keypair(tmp_path: Path, name: str) -> tuple[bytes, Path]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    pub = tmp_path / f"{name}.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return pem, pub


def app(tmp_path: Path, version: str) -> Path:
    src = tmp_path / f"src-{version}"
    (src / "bin").mkdir(parents=True)
    (src / "bin" / "tillbox").write_text(f"#!/bin/sh\necho {version}\n")
    (src / "bin" / "tillbox").chmod(0o755)
    (src / "VERSION").write_text(version)
    return src


@pytest.fixture
def signer(tmp_path: Path) -> tuple[bytes, list[object]]:
    pem, pub = keypair(tmp_path, "release")
    return pem, load_public_keys([pub])


def bundle(tmp_path: Path, pem: bytes, version: str) -> Path:
    out = tmp_path / f"tillbox-{version}.tar"
    build_bundle(app(tmp_path, version), version, pem, out)
    return out


def idle() -> str | None:
    return None


def test_good_bundle_is_applied_and_survives_restart(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    root = tmp_path / "opt"
    inst = Installer(root)
    inst.install(bundle(tmp_path, pem, "1.0.0"), keys, busy=idle)
    assert inst.gate(lambda: True)
    inst.install(bundle(tmp_path, pem, "1.1.0"), keys, busy=idle)
    assert (inst.current, inst.previous, inst.pending) == ("1.1.0", "1.0.0", "1.1.0")
    assert inst.gate(lambda: True)
    again = Installer(root)  # a restart reads the same state from disk
    assert (again.current, again.pending) == ("1.1.0", None)
    assert (root / "current" / "VERSION").read_text() == "1.1.0"
    assert (root / "current" / "bin" / "tillbox").stat().st_mode & 0o111


def test_failed_health_gate_rolls_back(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    inst = Installer(tmp_path / "opt")
    inst.install(bundle(tmp_path, pem, "1.0.0"), keys, busy=idle)
    inst.gate(lambda: True)
    inst.install(bundle(tmp_path, pem, "2.0.0"), keys, busy=idle)
    assert not inst.gate(lambda: False)
    assert (inst.current, inst.pending) == ("1.0.0", None)
    assert (tmp_path / "opt" / "current" / "VERSION").read_text() == "1.0.0"
    assert Installer(tmp_path / "opt")._state()["failed"] == ["2.0.0"]


def test_bad_signature_is_refused(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    _pem, keys = signer
    other_pem, _ = keypair(tmp_path, "attacker")
    forged = bundle(tmp_path, other_pem, "6.6.6")
    with pytest.raises(UpdateError, match="bad signature"):
        verify_bundle(forged, keys)
    inst = Installer(tmp_path / "opt")
    with pytest.raises(UpdateError, match="bad signature"):
        inst.install(forged, keys, busy=idle)
    assert inst.current is None


def test_tampered_payload_is_refused(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    good = bundle(tmp_path, pem, "1.0.0")
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            if member.name == "payload/VERSION":
                data = b"evil"
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(UpdateError, match="VERSION does not match"):
        verify_bundle(bad, keys)


def test_extra_or_escaping_files_are_refused(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    good = bundle(tmp_path, pem, "1.0.0")
    bad = tmp_path / "extra.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        dst.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UpdateError, match="unexpected file"):
        verify_bundle(bad, keys)
    (tmp_path / "junk.tar").write_bytes(b"junk" * 100)
    with pytest.raises(UpdateError, match="not a valid update bundle"):
        verify_bundle(tmp_path / "junk.tar", keys)


def test_update_waits_while_trading(tmp_path: Path, signer, demo_till: Till) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    data = demo_till.ledger.path.parent
    assert trading(data) == "shift 1 is open"
    inst = Installer(tmp_path / "opt")
    b = bundle(tmp_path, pem, "1.0.0")
    with pytest.raises(UpdateBusy, match="shift 1 is open"):
        inst.install(b, keys, busy=lambda: trading(data))
    assert inst.current is None
    (data / "sale-open").write_text("")
    assert trading(data) == "a sale is open"
    inst.install(b, keys, busy=lambda: trading(data), force=True)
    assert inst.current == "1.0.0"


def test_idle_till_is_not_busy(tmp_path: Path, till: Till) -> None:
    assert trading(till.ledger.path.parent) is None
    open_shift(till)
    assert trading(till.ledger.path.parent) == "shift 1 is open"


def test_cli_build_install_gate_and_rollback(tmp_path: Path) -> None:
    import http.server
    import subprocess
    import sys
    import threading

    pem, pub = keypair(tmp_path, "release")
    keydir = tmp_path / "keys"
    keydir.mkdir()
    (keydir / "release.pem").write_bytes(pub.read_bytes())
    (tmp_path / "release.key").write_bytes(pem)

    def tillbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    good_url = f"http://127.0.0.1:{server.server_port}/api/v1/health"
    root, data = tmp_path / "opt", tmp_path / "data"
    try:
        for version in ("1.0.0", "2.0.0"):
            out = tillbox("update", "build", str(app(tmp_path, version)), "--version", version, "--key",
                          str(tmp_path / "release.key"), "--out", str(tmp_path / f"{version}.tar"))  # fmt: skip
            assert out.returncode == 0, out.stderr
        common = ["--root", str(root), "--keys", str(keydir), "--data-dir", str(data)]
        assert tillbox("update", "install", str(tmp_path / "1.0.0.tar"), *common).returncode == 0
        out = tillbox("update", "gate", "--root", str(root), "--url", good_url, "--data-dir", str(data))
        assert out.returncode == 0 and "version 1.0.0 is good" in out.stdout
        assert tillbox("update", "install", str(tmp_path / "2.0.0.tar"), *common).returncode == 0
        out = tillbox("update", "gate", "--root", str(root), "--url", "http://127.0.0.1:1/", "--wait", "0",
                      "--data-dir", str(data))  # fmt: skip
        assert out.returncode == 1 and "rolled back to 1.0.0" in out.stderr
        assert Installer(root).current == "1.0.0"
    finally:
        server.shutdown()
        server.server_close()
