"""Huge pages by re-execution: when it applies, and that the re-executed process runs the same
command with the tunable set."""

from __future__ import annotations

import os
import subprocess
import sys

from sgdjax import host

GLIBC = (2, 36)


def test_wants_reexec_only_where_it_gives_huge_pages():
    assert host.wants_reexec({}, "linux", GLIBC, "madvise")
    assert host.wants_reexec({"GLIBC_TUNABLES": "glibc.malloc.arena_max=2"}, "linux", GLIBC,
                                "madvise")
    assert not host.wants_reexec({}, "linux", GLIBC, "always")  # has them already
    assert not host.wants_reexec({}, "linux", GLIBC, "never")
    assert not host.wants_reexec({}, "linux", GLIBC, None)
    assert not host.wants_reexec({}, "linux", (2, 34), "madvise")  # tunable unknown
    assert not host.wants_reexec({}, "linux", None, "madvise")  # musl, ...
    assert not host.wants_reexec({}, "darwin", GLIBC, "madvise")
    assert not host.wants_reexec({"SGDJAX_HUGEPAGES": "0"}, "linux", GLIBC, "madvise")
    assert not host.wants_reexec({"SGDJAX_HUGEPAGES": "1"}, "linux", GLIBC, "madvise")
    assert not host.wants_reexec({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, "linux",
                                    GLIBC, "madvise")


def test_thp_mode_and_glibc_version(tmp_path):
    f = tmp_path / "enabled"
    f.write_text("always [madvise] never\n")
    assert host.thp_mode(str(f)) == "madvise"
    f.write_text("[always] madvise never\n")
    assert host.thp_mode(str(f)) == "always"
    assert host.thp_mode(str(tmp_path / "missing")) is None
    assert host.glibc_version(("glibc", "2.36")) == (2, 36)
    assert host.glibc_version(("", "")) is None


def test_reexec_runs_the_same_command_with_the_tunable():
    code = ("import os, sys; from sgdjax.host import reexec_with_huge_pages; "
            "reexec_with_huge_pages(); "
            "print(os.environ.get('SGDJAX_HUGEPAGES'), os.environ.get('GLIBC_TUNABLES'), "
            "sys.argv[1:])")
    env = {k: v for k, v in os.environ.items() if k not in ("SGDJAX_HUGEPAGES", "GLIBC_TUNABLES")}
    out = subprocess.run([sys.executable, "-c", code, "a", "b"], env=env, capture_output=True,
                         text=True, check=True).stdout.strip().split(maxsplit=2)
    if host.wants_reexec(env, sys.platform, host.glibc_version(), host.thp_mode()):
        assert out == ["1", host.TUNABLE, "['a', 'b']"]
    else:
        assert out == ["None", "None", "['a', 'b']"]
    # the switch keeps the process as started
    env["SGDJAX_HUGEPAGES"] = "0"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip().split(maxsplit=2)
    assert out == ["0", "None", "[]"]
