"""`agent-sandbox doctor` judges a live posture report: what it flags."""

from __future__ import annotations

from typing import Any

from agent_sandbox.config import EngineSettings, Settings
from agent_sandbox.doctor import posture_problems, posture_summary

GOOD: dict[str, Any] = {
    "uid": 1000, "euid": 1000,
    "capabilities": dict.fromkeys(["CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb"], "0000000000000000"),
    "no_new_privs": "1", "seccomp": "2", "interfaces": ["lo"], "root_write": "EROFS",
    "work_mount": ["rw", "noexec", "nosuid"], "tmp_mount": ["rw", "noexec", "nosuid"], "runtime_sockets": [],
}  # fmt: skip


def test_a_hardened_sandbox_has_no_problems() -> None:
    assert posture_problems(GOOD, Settings()) == []


def test_each_weakness_is_named() -> None:
    bad = {
        **GOOD,
        "uid": 0,
        "capabilities": {**GOOD["capabilities"], "CapEff": "00000000a80425fb"},
        "seccomp": "0",
        "interfaces": ["eth0", "lo"],
        "root_write": "ok",
        "tmp_mount": ["rw"],
        "runtime_sockets": ["/var/run/docker.sock"],
    }
    problems = "\n".join(posture_problems(bad, Settings()))
    for words in ("runs as root", "has capabilities", "seccomp", "network interfaces", "root filesystem is writable",
                  "tmp is not noexec", "runtime socket"):  # fmt: skip
        assert words in problems


def test_interfaces_are_expected_when_the_operator_configured_a_network() -> None:
    settings = Settings(engine=EngineSettings(network="sandbox-net"))
    assert posture_problems({**GOOD, "interfaces": ["eth0", "lo"]}, settings) == []


def test_under_gvisor_what_its_proc_cannot_show_is_not_held_against_it() -> None:
    """gVisor's /proc shows no seccomp line or NoNewPrivs (its filter guards the sentry), and no
    nosuid among mount options; everything else is judged as under runc."""
    gvisor = Settings(engine=EngineSettings(runtime="runsc"))
    as_gvisor_shows_it = {
        **GOOD,
        "seccomp": "0",
        "no_new_privs": "",
        "work_mount": ["rw", "noexec"],
        "tmp_mount": ["rw", "noexec"],
    }
    assert posture_problems(as_gvisor_shows_it, gvisor) == []
    assert len(posture_problems(as_gvisor_shows_it, Settings())) == 3
    still_wrong = {**as_gvisor_shows_it, "uid": 0, "work_mount": ["rw"], "root_write": "ok"}
    problems = "\n".join(posture_problems(still_wrong, gvisor))
    for words in ("runs as root", "work is not noexec", "root filesystem is writable"):
        assert words in problems


def test_the_summary_names_the_host_uid_when_the_engine_remaps_user_namespaces() -> None:
    plain = posture_summary({**GOOD, "uid_map": [[0, 0, 4294967295]]}, Settings())
    assert plain.startswith("uid 1000, no capabilities, seccomp, no-new-privileges, no network")
    remapped = posture_summary({**GOOD, "uid_map": [[0, 100000, 65536]]}, Settings())
    assert remapped.startswith("uid 1000 (host uid 101000: user namespace remapped), no capabilities")
    gvisor = posture_summary(GOOD, Settings(engine=EngineSettings(runtime="runsc")))
    assert "no capabilities, gVisor's kernel, no network" in gvisor
