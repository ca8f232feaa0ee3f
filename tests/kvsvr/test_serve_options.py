"""`kvsvr serve` refuses, before it opens storage, to run with a security option
it can't honour: a usage error (exit 2) saying what is wrong and how to fix it.

`kvsvr make-secret` makes the secret a group needs. The command runs
in-process (CliRunner); every case here exits before a node would start.
"""

from __future__ import annotations

import stat
import subprocess
import sys

import pytest
from click.testing import CliRunner

from kvsvr.__main__ import main
from kvsvr.shell.secret_file import write_secret_file

GROUP = "1=127.0.0.1:7421,2=127.0.0.2:7421,3=127.0.0.3:7421"


def serve(tmp_path, *arguments: str):
    return CliRunner().invoke(main, ["serve", "--data-dir", str(tmp_path / "data"), *arguments])


def serve_member(tmp_path, *arguments: str):
    return serve(tmp_path, "--node-id", "1", "--group", GROUP, *arguments)


def secret_file(tmp_path, content: bytes | None = None, mode: int = 0o600) -> str:
    path = tmp_path / "peer.secret"
    if content is None:
        write_secret_file(str(path))
    else:
        path.write_bytes(content)
    path.chmod(mode)
    return str(path)


def assert_refused(result, tmp_path, *phrases: str) -> None:
    assert result.exit_code == 2, result.output
    for phrase in phrases:
        assert phrase in result.output, result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "data").exists(), "storage was opened before the options were checked"


def test_a_group_member_without_a_secret_file_refuses_to_start_and_says_how_to_make_one(tmp_path):
    result = serve_member(tmp_path)
    assert_refused(result, tmp_path, "needs the group's secret, --peer-secret-file",
                   "kvsvr make-secret FILE")


@pytest.mark.parametrize(
    "content, mode, words",
    [
        (b"", 0o600, "it is empty"),
        (b"00" * 15 + b"\n", 0o600, "holds 15 bytes; a peer secret needs at least 16"),
        (b"correct horse battery staple", 0o600, "does not hold hex digits"),
        (None, 0o644, "its mode 0644 lets group or others read or change it; run `chmod 600"),
        (None, 0o640, "its mode 0640 lets group or others"),
    ],
    ids=["empty", "short", "not-hex", "world-readable", "group-readable"],
)
def test_a_secret_file_that_must_not_be_used_is_refused(tmp_path, content, mode, words):
    path = secret_file(tmp_path, content, mode)
    result = serve_member(tmp_path, "--peer-secret-file", path)
    assert_refused(result, tmp_path, f"--peer-secret-file {path}: refusing it", words)


def test_a_missing_secret_file_is_refused(tmp_path):
    result = serve_member(tmp_path, "--peer-secret-file", str(tmp_path / "nowhere"))
    assert_refused(result, tmp_path, "cannot open it")


def test_a_bad_previous_secret_file_is_refused_too(tmp_path):
    current = secret_file(tmp_path)
    previous = tmp_path / "previous.secret"
    previous.write_bytes(b"00" * 32)
    previous.chmod(0o604)
    result = serve_member(tmp_path, "--peer-secret-file", current,
                          "--peer-secret-previous-file", str(previous))
    assert_refused(result, tmp_path, "--peer-secret-previous-file", "its mode 0604")


def test_a_secret_is_for_group_members_only(tmp_path):
    result = serve(tmp_path, "--peer-secret-file", secret_file(tmp_path))
    assert_refused(result, tmp_path, "--peer-secret-file is for a member of a group")


def test_there_is_no_option_taking_the_secret_itself(tmp_path):
    """The secret is never given on the command line, where `ps` shows it."""
    result = CliRunner().invoke(main, ["serve", "--help"])
    options = [word for word in result.output.split() if word.startswith("--peer-secret")]
    assert sorted(set(options)) == ["--peer-secret-file", "--peer-secret-previous-file"]


@pytest.mark.parametrize(
    "arguments, words",
    [
        (["--tls-cert", "cert.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-key", "key.pem"], "--tls-cert and --tls-key go together"),
        (["--tls-cacert", "ca.pem"], "--tls-cacert needs --tls-cert and --tls-key"),
        (["--tls-cert", "missing.pem", "--tls-key", "missing.key"], "No such file"),
    ],
    ids=["cert-alone", "key-alone", "cacert-alone", "missing-files"],
)
def test_tls_options_that_cannot_work_are_refused(tmp_path, arguments, words):
    result = serve(tmp_path, *arguments)
    assert_refused(result, tmp_path, words)


def test_a_key_that_does_not_match_the_certificate_is_refused(tmp_path, tls_files):
    result = serve(tmp_path, "--tls-cert", str(tls_files.cert),
                   "--tls-key", str(tls_files.self_signed_key))
    assert_refused(result, tmp_path, f"--tls-cert {tls_files.cert}", "KEY_VALUES_MISMATCH")


def test_make_secret_writes_a_file_only_its_owner_can_read(tmp_path):
    path = tmp_path / "group.secret"
    result = CliRunner().invoke(main, ["make-secret", str(path)])
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert len(bytes.fromhex(path.read_text().strip())) == 32


def test_make_secret_refuses_to_overwrite(tmp_path):
    path = secret_file(tmp_path)
    before = open(path, "rb").read()
    result = CliRunner().invoke(main, ["make-secret", path])
    assert result.exit_code == 2 and "refusing to overwrite a secret" in result.output
    assert open(path, "rb").read() == before


def test_the_real_command_exits_2_with_the_message_on_stderr(tmp_path):
    """The same check through `python -m kvsvr`, as an operator meets it."""
    completed = subprocess.run(
        [sys.executable, "-m", "kvsvr", "serve", "--data-dir", str(tmp_path / "data"),
         "--node-id", "1", "--group", GROUP],
        capture_output=True, text=True, timeout=60)
    assert completed.returncode == 2
    assert "--peer-secret-file" in completed.stderr and "kvsvr make-secret" in completed.stderr
    assert not (tmp_path / "data").exists()
