"""The launcher's reading of the sandbox's cgroup, v1 and v2, from files recorded on real hosts.

This machine runs cgroup v1, so the integration tests prove v1 end to end; v2 is proven here
only, from the files as a v2 host (Linux 6.x, a container's own cgroup namespace) shows them.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from agent_sandbox.engine import launch


def load_launcher() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "sandbox_launcher", Path(launch.__file__).parent / "launcher.py"
    )
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # not __main__: main() does not run
    return module


LAUNCHER = load_launcher()

V1 = {
    "memory/memory.max_usage_in_bytes": "331612160\n",
    "memory/memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n",
    "cpuacct/cpuacct.usage": "1021458033\n",
    "pids/pids.events": "max 7\n",
}
V2 = {
    "cgroup.controllers": "cpuset cpu io memory hugetlb pids rdma misc\n",
    "memory.peak": "331612160\n",
    "memory.events": "low 0\nhigh 0\nmax 41\noom 2\noom_kill 2\noom_group_kill 0\n",
    "cpu.stat": "usage_usec 1021458\nuser_usec 1001000\nsystem_usec 20458\nnr_periods 0\n",
    "pids.max": "64\n",
    "pids.events": "max 7\n",
    "pids.events.local": "max 7\n",
}
EXPECTED = {"memory_peak": 331612160, "cpu_ns": 1021458000, "oom_kills": 2, "forks_refused": 7}


def record(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.mark.parametrize("files", [V1, V2], ids=["v1", "v2"])
def test_each_cgroup_version_gives_the_same_counters(tmp_path: Path, files: dict[str, str]) -> None:
    record(tmp_path, files)
    counters = LAUNCHER._counters(str(tmp_path))
    if files is V1:
        assert counters == {**EXPECTED, "cpu_ns": 1021458033}
    else:
        assert counters == EXPECTED


@pytest.mark.parametrize(("limit", "refused"), [("64\n", 7), ("max\n", None)])
def test_v2_counts_refused_forks_only_where_the_limit_is_the_cgroups_own(
    tmp_path: Path, limit: str, refused: int | None
) -> None:
    """v2 counts a refusal in the cgroup whose limit refused it (and its ancestors): a container's
    own limit (Docker) shows, a pod's (above the container's cgroup) never would, so there is no
    counter then and the launcher samples the tasks."""
    record(tmp_path, {**V2, "pids.max": limit})
    assert LAUNCHER._counters(str(tmp_path))["forks_refused"] == refused


def test_v2_before_memory_peak_existed_has_no_peak(tmp_path: Path) -> None:
    """memory.peak came with Linux 5.19: without it the launcher falls back to the processes'."""
    record(tmp_path, {name: text for name, text in V2.items() if name != "memory.peak"})
    counters = LAUNCHER._counters(str(tmp_path))
    assert counters["memory_peak"] is None
    assert counters["cpu_ns"] == EXPECTED["cpu_ns"]


def test_no_cgroup_files_at_all_as_under_gvisor_is_no_counter(tmp_path: Path) -> None:
    assert LAUNCHER._counters(str(tmp_path)) == dict.fromkeys(EXPECTED)


def test_without_counters_usage_comes_from_the_reaped_processes() -> None:
    none = dict.fromkeys(EXPECTED)
    ran = {"exit_code": 0, "return_value": None, "timed_out": False, "wall_s": 1.5, "dumps": []}
    usage = LAUNCHER._usage(none, none, 0.0, ran)
    assert usage["source"] == "processes"
    assert usage["wall_s"] == 1.5
    with_cgroup = LAUNCHER._usage({**EXPECTED, "cpu_ns": 10**9}, {**EXPECTED, "cpu_ns": 3 * 10**9}, 0.0, ran)
    assert with_cgroup == {"peak_memory_bytes": 331612160, "cpu_s": 2.0, "wall_s": 1.5, "source": "cgroup"}


@pytest.mark.parametrize(
    ("kills_after", "exit_code", "timed_out", "victim"),
    [(0, 137, False, None), (1, 137, False, "program"), (1, 0, False, "child"), (1, 137, True, "child")],
)
def test_the_oom_victim_is_the_program_only_when_it_died_of_a_kill_we_did_not_send(
    kills_after: int, exit_code: int, timed_out: bool, victim: str | None
) -> None:
    ran = {"exit_code": exit_code, "return_value": None, "timed_out": timed_out, "wall_s": 1.0, "dumps": []}
    before, after = {**EXPECTED, "oom_kills": 0}, {**EXPECTED, "oom_kills": kills_after}
    assert LAUNCHER._oom_victim(before, after, ran) == victim
