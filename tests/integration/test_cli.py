"""The `agent-sandbox` command as a person uses it, in a real subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[2]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_sandbox", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def test_run_a_file_prints_its_output_and_returns_its_exit_code() -> None:
    done = cli("run", "examples/hello.py", "--", "a", "b")
    assert done.returncode == 0, done.stderr
    assert "Hello from Python 3" in done.stdout
    assert "arguments ['a', 'b']" in done.stdout
    assert "[agent-sandbox] exit 0" in done.stderr


def test_run_a_folder_with_an_entrypoint_and_json(tmp_path: Path) -> None:
    (tmp_path / "lib").mkdir()
    (tmp_path / "lib" / "util.py").write_text("def double(x):\n    return 2 * x\n")
    app = "import sys\nfrom lib.util import double\nprint(double(21))\nsys.exit(5)\n"
    (tmp_path / "app.py").write_text(app)
    (tmp_path / "blob.bin").write_bytes(b"\xff\x00\xfe")
    done = cli("run", str(tmp_path), "--entrypoint", "app.py", "--json")
    assert done.returncode == 5
    result = json.loads(done.stdout)
    assert result["stdout"] == "42\n"
    assert result["exit_code"] == 5


def test_a_limit_hit_is_shown_in_the_status_line(tmp_path: Path) -> None:
    program = tmp_path / "slow.py"
    program.write_text("import time\nprint('working')\ntime.sleep(60)\n")
    done = cli("run", "--timeout", "1", str(program))
    assert done.returncode == 137
    assert done.stdout == "working\n"
    assert "timed out" in done.stderr
    assert "limits hit: timeout" in done.stderr


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("run", "--timeout", "9999", "examples/hello.py"), "timeout_s 9999 is above the maximum"),
        (("run", "examples/hello.py", "--entrypoint", "nope.py"), "entrypoint 'nope.py' is not one"),
        (("run", "no/such/path.py"), "neither a file nor a folder"),
        (("run", "examples/hello.py", "-r", "docopt"), "only source distributions"),
        (
            ("run", "examples/hello.py", "--image", "datascience"),
            "image profile 'datascience' is not offered",
        ),
        (
            ("image", "build", "--profile", "minimal", "--profile", "datascience", "--tag", "x:1"),
            "--tag names one image",
        ),
    ],
)
def test_refusals_exit_2_with_a_clear_message(args: tuple[str, ...], words: str) -> None:
    done = cli(*args)
    assert done.returncode == 2
    assert words in done.stderr


def test_run_with_a_requirement_reports_the_install_apart(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import six\nprint(six.__name__)\n")
    done = cli("run", str(tmp_path / "main.py"), "-r", "six", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["stdout"] == "six\n"
    assert result["install"]["ok"] is True


def test_a_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmemory = 1\n")
    done = cli("--config", str(config), "run", "examples/hello.py")
    assert done.returncode == 2
    assert "limits.memory" in done.stderr


def test_doctor_reports_a_working_sandbox() -> None:
    done = cli("doctor")
    assert done.returncode == 0, done.stderr
    assert "a trial run works" in done.stderr
    assert "posture: non-root, no capabilities, no network" in done.stderr


def test_a_missing_image_exits_3_and_says_how_to_build_it() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "agent_sandbox", "run", "examples/hello.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={
            "PATH": "/usr/bin:/bin",
            "AGENT_SANDBOX_ENGINE__IMAGE_REPOSITORY": "agent-sandbox-does-not-exist",
        },
        timeout=60,
    )
    assert done.returncode == 3
    assert "agent-sandbox image build" in done.stderr
