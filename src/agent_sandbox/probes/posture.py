"""Posture probe: run INSIDE a sandbox container, prints one JSON object of what it finds.

Standard library only. Each key is one claim of SECURITY.md, measured from the inside: who we
are, what we may do, what we can see and reach. The host side decides what is acceptable.
"""

import ctypes
import errno
import json
import os
import socket
import stat
import subprocess
from collections.abc import Callable
from typing import Any

CAPABILITY_SETS = ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
RUNTIME_SOCKETS = (
    "/var/run/docker.sock", "/run/docker.sock", "/run/containerd/containerd.sock",
    "/var/run/containerd/containerd.sock", "/run/crio/crio.sock", "/run/podman/podman.sock",
    "/var/run/secrets/kubernetes.io/serviceaccount/token",
)  # fmt: skip
DANGEROUS_DEVICES = ("kvm", "mem", "kmem", "port", "sda", "vda", "nvme0", "loop0", "fuse")
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWNET = 0x00020000, 0x10000000, 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def outcome(action: Callable[[], object]) -> str:
    """'ok' if it worked, else the errno name (e.g. 'EPERM')."""
    try:
        action()
    except OSError as exc:
        return errno.errorcode.get(exc.errno or 0, str(exc.errno))
    return "ok"


def libc_call(name: str, *args: object) -> str:
    def call() -> None:
        if getattr(libc, name)(*args) != 0:
            code = ctypes.get_errno()
            raise OSError(code, os.strerror(code))

    return outcome(call)


def read_from(path: str) -> str:
    def read() -> None:
        with open(path) as content:
            content.read()

    return outcome(read)


def interfaces() -> list[str]:
    with open("/proc/net/dev") as lines:
        return sorted(line.split(":")[0].strip() for line in lines.readlines()[2:])


def write_to(path: str) -> str:
    def write() -> None:
        with open(path, "a"):
            pass

    return outcome(write)


def status() -> dict[str, str]:
    with open("/proc/self/status") as lines:
        return dict(line.rstrip("\n").split(":\t", 1) for line in lines if ":\t" in line)


def mounts(kinds: tuple[str, ...] = ()) -> dict[str, list[str]]:
    """Mount point -> options, of every mount (or of those of the given filesystem types)."""
    with open("/proc/self/mounts") as lines:
        rows = [line.split() for line in lines]
    return {row[1]: row[3].split(",") for row in rows if not kinds or row[2] in kinds}


def writable_under(root: str, limit: int = 5000) -> list[str]:
    """Files under ``root`` this process may open for writing (at most ``limit`` looked at)."""
    found: list[str] = []
    seen = 0
    for folder, _, names in os.walk(root):
        for name in names:
            seen += 1
            path = os.path.join(folder, name)
            if os.access(path, os.W_OK) and write_to(path) == "ok":
                found.append(path)
            if seen >= limit:
                return found
    return found


def dns_lookup() -> str:
    try:
        socket.getaddrinfo("example.com", 443)
    except OSError as exc:
        return type(exc).__name__
    return "resolved"


def routes() -> list[list[str]]:
    rows: list[list[str]] = []
    for table, header_lines in (("/proc/net/route", 1), ("/proc/net/ipv6_route", 0)):
        try:
            with open(table) as lines:
                rows += [line.split() for line in lines.readlines()[header_lines:]]
        except OSError:
            pass
    return [row for row in rows if row and not row[0].startswith("lo") and row[-1] != "lo"]


def devices() -> list[str]:
    found = []
    for name in sorted(os.listdir("/dev")):
        mode = os.lstat(os.path.join("/dev", name)).st_mode
        if stat.S_ISBLK(mode) or name in DANGEROUS_DEVICES:
            found.append(name)
    return found


def id_map(path: str) -> list[list[int]]:
    """The user namespace's id mapping: [inside, outside, count] per line ([[0, 0, 4294967295]]
    when the container shares the host's ids)."""
    try:
        with open(path) as lines:
            return [[int(field) for field in line.split()] for line in lines if line.strip()]
    except OSError:
        return []


def process_count() -> int:
    return sum(1 for pid in os.listdir("/proc") if pid.isdigit())


def first_word(path: str) -> str:
    try:
        with open(path, "rb") as words:
            return words.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return ""


def cgroup_paths() -> list[str]:
    with open("/proc/self/cgroup") as lines:
        return sorted({line.rstrip("\n").split(":", 2)[2] for line in lines})


def release_agents() -> list[str]:
    agents: list[str] = []
    for folder, _, names in os.walk("/sys/fs/cgroup"):
        agents += [os.path.join(folder, n) for n in names if n in ("release_agent", "notify_on_release")]
    return [path for path in agents if write_to(path) == "ok"]


def main() -> None:
    me = status()
    all_mounts = mounts()
    report: dict[str, Any] = {
        "uid": os.getuid(), "euid": os.geteuid(), "gid": os.getgid(), "groups": os.getgroups(),
        "uid_map": id_map("/proc/self/uid_map"), "gid_map": id_map("/proc/self/gid_map"),
        "capabilities": {name: me.get(name, "").strip() for name in CAPABILITY_SETS},
        "no_new_privs": me.get("NoNewPrivs", "").strip(),
        "seccomp": me.get("Seccomp", "").strip(),
        "interfaces": interfaces(),
        "routes": routes(),
        "dns": dns_lookup(),
        "runtime_sockets": [path for path in RUNTIME_SOCKETS if os.path.exists(path)],
        "environment": sorted(os.environ),
        # World-writable, so only a read-only root can refuse it (gVisor checks ownership first).
        "root_write": write_to("/var/tmp/owned"),
        "root_mount": all_mounts.get("/", []),
        "work_mount": all_mounts.get("/work", []),
        "tmp_mount": all_mounts.get("/tmp", []),
        "cgroup_mounts": mounts(("cgroup", "cgroup2")),
        "sys_mount": all_mounts.get("/sys", []),
        "proc_sys_writable": writable_under("/proc/sys"),
        "core_pattern_write": write_to("/proc/sys/kernel/core_pattern"),
        "sysrq_write": write_to("/proc/sysrq-trigger"),
        "cgroup_writable": writable_under("/sys/fs/cgroup"),
        "release_agent_writable": release_agents(),
        "devices": devices(),
        "setuid_0": outcome(lambda: os.setuid(0)),
        "chroot": outcome(lambda: os.chroot("/tmp")),
        "mknod": outcome(lambda: os.mknod("/tmp/probe-dev", stat.S_IFCHR | 0o600, os.makedev(1, 3))),
        "mount": libc_call("mount", b"none", b"/tmp", b"tmpfs", 0, None),
        "unshare_user": libc_call("unshare", CLONE_NEWUSER),
        "unshare_mount": libc_call("unshare", CLONE_NEWNS),
        "unshare_net": libc_call("unshare", CLONE_NEWNET),
        "shadow_read": read_from("/etc/shadow"),
        "pid_1": first_word("/proc/1/cmdline"),
        "process_count": process_count(),
        "cgroup_paths": cgroup_paths(),
        "shm_mount": all_mounts.get("/dev/shm", []),
        "shm_mib": shm_mib(),
        "ipc_namespace": namespace("ipc"),
        "exec_from_work": exec_from("/work"),
        "exec_from_tmp": exec_from("/tmp"),
    }  # fmt: skip
    print(json.dumps(report))


def namespace(kind: str) -> int | None:
    """This process's namespace of ``kind`` (its nsfs inode, unique on the host), if shown."""
    try:
        return os.stat(f"/proc/self/ns/{kind}").st_ino
    except OSError:
        return None


def shm_mib() -> int | None:
    """The size of /dev/shm in MiB, if there is one."""
    try:
        found = os.statvfs("/dev/shm")
    except OSError:
        return None
    return found.f_blocks * found.f_frsize // 2**20


def exec_from(folder: str) -> str:
    path = os.path.join(folder, "probe-tool.sh")
    with open(path, "w") as script:
        script.write("#!/bin/sh\nexit 0\n")
    os.chmod(path, 0o755)
    return outcome(lambda: subprocess.run([path], check=False))


if __name__ == "__main__":
    main()
