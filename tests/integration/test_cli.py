"""The `agent-sandbox` command as a person uses it, in a real subprocess."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from agent_sandbox.config import GVISOR
from agent_sandbox.engine.docker import DockerEngine
from tests.helpers import skip_unless_offered

ROOT = Path(__file__).parents[2]


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_sandbox", *args], capture_output=True, text=True, cwd=cwd, timeout=120
    )


def cli_with_env(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent_sandbox", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", **env},
        timeout=120,
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
        (("run", "--batch", "examples/hello.py"), "is not a JSON array nor JSON lines"),
        (("run", "--batch", "--timeout", "3", "x.json"), "not with --batch: --timeout; give those per item"),
    ],
)
def test_refusals_exit_2_with_a_clear_message(args: tuple[str, ...], words: str) -> None:
    done = cli(*args)
    assert done.returncode == 2
    assert words in done.stderr


def test_a_batch_file_runs_each_item_in_its_own_sandbox(tmp_path: Path) -> None:
    items = [
        {"code": "print('a')"},
        {"code": "import sys\nsys.exit(2)"},
        {
            "files": [{"path": "m.py", "content": "import sys\nprint(sys.argv[1])"}],
            "entrypoint": "m.py",
            "args": ["z"],
        },
    ]
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(item) for item in items) + "\n")
    done = cli("run", "--batch", str(batch))
    assert done.returncode == 1  # one failed
    summary, first, second, third = done.stdout.splitlines()
    assert summary == "3 programs: 2 passed, 1 failed, 0 did not run"
    assert first.startswith("[0] exit 0 in ")
    assert first.endswith(": a")
    assert second.startswith("[1] exit 2 in ")
    assert third.endswith(": z")
    assert "[agent-sandbox] 3 of 3 programs done" in done.stderr
    (tmp_path / "ok.json").write_text(json.dumps(items[:1]))
    answer = cli("run", "--batch", str(tmp_path / "ok.json"), "--json")
    assert answer.returncode == 0
    assert json.loads(answer.stdout)["results"][0]["result"]["stdout"] == "a\n"


def test_run_with_a_requirement_reports_the_install_apart(tmp_path: Path) -> None:
    (tmp_path / "main.py").write_text("import six\nprint(six.__name__)\n")
    done = cli("run", str(tmp_path / "main.py"), "-r", "six", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["stdout"] == "six\n"
    assert result["install"]["ok"] is True
    shown = cli("run", str(tmp_path / "main.py"), "-r", "six")  # the long steps, as they start
    assert shown.stderr.splitlines()[:2] == [
        "[agent-sandbox] fetching wheels for the requirements ...",
        "[agent-sandbox] installing them in the sandbox ...",
    ]
    assert shown.stdout == "six\n"


def test_a_bad_config_exits_2_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[limits]\nmemory = 1\n")
    done = cli("--config", str(config), "run", "examples/hello.py")
    assert done.returncode == 2
    assert "limits.memory" in done.stderr


@contextlib.contextmanager
def running(program: Path) -> Iterator[tuple[subprocess.Popen[bytes], IO[bytes], IO[bytes]]]:
    """`agent-sandbox run PROGRAM`, with its stdout and stderr to read as they come."""
    command = [sys.executable, "-m", "agent_sandbox", "run", str(program)]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        yield process, process.stdout, process.stderr


def test_output_is_shown_as_the_program_prints_it(tmp_path: Path) -> None:
    program = tmp_path / "steps.py"
    program.write_text(
        "import sys, time\nprint('first')\nprint('oops', file=sys.stderr)\ntime.sleep(3)\nprint('second')\n"
    )
    with running(program) as (process, stdout, stderr):
        assert stdout.readline() == b"first\n"
        first_at = time.monotonic()
        assert stderr.readline() == b"oops\n"
        assert stdout.readline() == b"second\n"
        # The first line came while the program slept, not with the result at the end.
        assert time.monotonic() - first_at > 1
        assert process.wait(timeout=60) == 0
        assert stderr.read().decode().startswith("[agent-sandbox] exit 0 in 3.")


def test_a_reader_that_leaves_early_costs_nothing_but_the_output(tmp_path: Path) -> None:
    """`agent-sandbox run x.py | head -1`: the run goes on and ends with its own exit code."""
    program = tmp_path / "chatty.py"
    program.write_text(
        "import sys, time\nprint('first', flush=True)\ntime.sleep(1)\nprint('x' * 100_000)\nsys.exit(3)\n"
    )
    with running(program) as (process, stdout, stderr):
        assert stdout.readline() == b"first\n"
        stdout.close()
        assert process.wait(timeout=60) == 3
        errors = stderr.read().decode()
    assert "Traceback" not in errors
    assert errors.startswith("[agent-sandbox] exit 3 in ")


def test_out_saves_the_files_the_program_wrote(tmp_path: Path) -> None:
    program = tmp_path / "report.py"
    program.write_text("import os\nos.makedirs('out')\nopen('out/table.csv', 'w').write('a,b\\n1,2\\n')\n")
    done = cli("run", str(program), "--out", str(tmp_path / "saved"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "saved" / "out" / "table.csv").read_text() == "a,b\n1,2\n"
    saved = tmp_path / "saved"
    assert f"1 of 1 file(s) saved to {saved}: {saved / 'out' / 'table.csv'}" in done.stderr
    assert "--out DIR saves them" in cli("run", str(program)).stderr

    again = cli("run", str(program), "--out", str(tmp_path / "saved"))  # never over a file
    assert "not saving out/table.csv: " in again.stderr
    assert "exists and is kept" in again.stderr
    refused = cli("run", str(program), "--out", str(program))
    assert refused.returncode == 2
    assert "is a file; name a folder" in refused.stderr


def test_doctor_reports_a_working_sandbox() -> None:
    done = cli("doctor")
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split()[:2] for line in lines[:-1]] == [
        ["ok", "config"],
        ["ok", "engine"],
        ["ok", "runtime"],
        ["ok", "image"],
        ["ok", "trial"],
        ["ok", "posture"],
    ]
    assert "runc" in lines[2]
    assert "uid 1000, no capabilities, seccomp, no-new-privileges, no network" in lines[5]
    assert lines[-1] == "all checks passed"


def test_doctor_names_each_missing_image_and_how_to_build_it() -> None:
    done = cli_with_env(
        "doctor",
        AGENT_SANDBOX_ENGINE__IMAGE_REPOSITORY="agent-sandbox-does-not-exist",
        AGENT_SANDBOX_ENGINE__PROFILES='["minimal", "datascience"]',
    )
    assert done.returncode == 3
    assert (
        "FAIL  image      the sandbox image agent-sandbox-does-not-exist:datascience is not on the Docker engine; build it with `agent-sandbox image build --profile datascience`"
        in done.stdout
    )
    assert "skip  trial run" in done.stdout
    assert "2 problem(s)" in done.stdout


def test_doctor_says_how_to_start_an_engine_that_does_not_answer() -> None:
    done = cli_with_env("doctor", DOCKER_HOST="tcp://127.0.0.1:9")
    assert done.returncode == 3
    assert "FAIL  engine" in done.stdout
    assert "scripts/ensure-engine.sh" in done.stdout


def test_a_runtime_the_engine_does_not_offer_stops_serve_and_fails_doctor() -> None:
    """engine.runtime names an OCI runtime the engine lacks: serve exits 3 before serving, with the
    fix; doctor marks the runtime line FAIL and still goes on to the rest."""
    with subprocess.Popen(
        [sys.executable, "-m", "agent_sandbox", "serve"],
        stdin=subprocess.PIPE,  # held open: only the failed start-up check can end it
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "AGENT_SANDBOX_ENGINE__RUNTIME": "gvisor-typo"},
    ) as served:
        assert served.stdout is not None
        assert served.stderr is not None
        assert served.wait(timeout=60) == 3
        assert served.stdout.read() == ""
        errors = served.stderr.read()
    assert "engine.runtime is 'gvisor-typo', but the Docker engine offers only" in errors
    assert "scripts/ensure-engine.sh" in errors
    checked = cli_with_env("doctor", AGENT_SANDBOX_ENGINE__RUNTIME="gvisor-typo")
    assert checked.returncode == 3
    assert "FAIL  runtime    gvisor-typo (engine.runtime; default runc; offered: " in checked.stdout
    assert "engine.runtime 'gvisor-typo' is not offered" in checked.stdout
    assert "image" in checked.stdout  # the checks after it still ran


def test_doctor_reports_gvisor_when_the_strict_profile_is_used(engine: DockerEngine) -> None:
    skip_unless_offered(engine, GVISOR, "configs/strict.toml")
    done = cli("--config", "configs/strict.toml", "doctor")
    assert done.returncode == 0, done.stdout
    assert "ok    runtime    runsc (engine.runtime; default runc; offered: " in done.stdout
    assert "uid 1000, no capabilities, gVisor's kernel, no network" in done.stdout


def test_a_missing_image_exits_3_and_says_how_to_build_it() -> None:
    done = cli_with_env(
        "run", "examples/hello.py", AGENT_SANDBOX_ENGINE__IMAGE_REPOSITORY="agent-sandbox-does-not-exist"
    )
    assert done.returncode == 3
    assert "agent-sandbox image build" in done.stderr


def runs_cli(runs: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The command with a store of the test's own."""
    return subprocess.run(
        [sys.executable, "-m", "agent_sandbox", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "AGENT_SANDBOX_RUNS__DIR": str(runs)},
        timeout=120,
    )


def test_a_detached_run_is_followed_with_the_runs_commands(tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    program = tmp_path / "steps.py"
    program.write_text(
        "import time\nfor i in range(3):\n    print('step', i, flush=True)\n    time.sleep(1)\n"
    )
    started = time.monotonic()
    detached = runs_cli(runs, "run", "--detach", str(program))
    assert detached.returncode == 0, detached.stderr
    assert time.monotonic() - started < 10  # it returns once the run is recorded, not at its end
    run_id = detached.stdout.strip()
    assert f"agent-sandbox runs status {run_id}" in detached.stderr

    deadline = time.monotonic() + 30
    while "step 0" not in (status := runs_cli(runs, "runs", "status", run_id)).stdout:
        assert time.monotonic() < deadline, status.stdout + status.stderr
        time.sleep(0.3)
    assert status.stdout.startswith(f"{run_id} running")
    assert runs_cli(runs, "runs", "list").stdout.startswith(run_id)

    result = runs_cli(runs, "runs", "result", run_id, "--wait", "30", "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["stdout"] == "step 0\nstep 1\nstep 2\n"
    shown = runs_cli(runs, "runs", "result", run_id)
    assert shown.stdout == "step 0\nstep 1\nstep 2\n"
    assert "[agent-sandbox] exit 0" in shown.stderr

    program.write_text("import time\nprint('waiting', flush=True)\ntime.sleep(60)\n")
    doomed = runs_cli(runs, "run", "--detach", str(program)).stdout.strip()
    assert runs_cli(runs, "runs", "result", doomed).returncode == 5  # not ended yet
    cancelled = runs_cli(runs, "runs", "cancel", doomed)
    assert cancelled.returncode == 0, cancelled.stderr
    assert f"{doomed} cancelled" in cancelled.stderr
    assert runs_cli(runs, "runs", "result", doomed).returncode == 6  # ended without a result
    unknown = runs_cli(runs, "runs", "status", "A" * 22)
    assert unknown.returncode == 2
    assert "there is no run" in unknown.stderr
