"""The launcher's command: bytecode for a Python of the server's bytecode format, its source for
any other, and the launcher's own arguments as before either way (the real launcher runs this
way in every integration test; here small stand-ins show which of the two ran)."""

from __future__ import annotations

import binascii
import marshal
import subprocess
import sys
import zlib

import pytest

from agent_sandbox.engine import launch
from agent_sandbox.engine.launch import LAUNCHER, NOTEBOOK_RUNNER, launcher_command

SHOW = "import sys; print({which!r}, sys.argv[1:] == [{runner!r}, 'direct'])"


def stand_in(which: str) -> str:
    return SHOW.format(which=which, runner=NOTEBOOK_RUNNER)


@pytest.mark.parametrize(
    ("tag", "ran"), [(sys.implementation.cache_tag, "bytecode"), ("other-999", "source")]
)
def test_the_bytecode_runs_where_the_format_matches_and_the_source_elsewhere(tag: str, ran: str) -> None:
    bytecode = binascii.b2a_base64(zlib.compress(marshal.dumps(compile(stand_in("bytecode"), "b", "exec"))))
    command = launcher_command(relay_output=False)
    assert command[5:8] == [sys.implementation.cache_tag, launch.LAUNCHER_BYTECODE, LAUNCHER]
    command[5:8] = [tag, bytecode.decode(), stand_in("source")]
    done = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, check=True)
    assert done.stdout == f"{ran} True\n"


def test_the_bytecode_is_the_launcher_s() -> None:
    shipped = marshal.loads(zlib.decompress(binascii.a2b_base64(launch.LAUNCHER_BYTECODE)))
    assert shipped == compile(LAUNCHER, "<launcher>", "exec")
