"""What a plan reads from the host (minictr/host.py)."""
import os
import resource

from minictr import host
from minictr.spec import defaults
from minictr.spec.options import RunOptions

FULL = (1 << len(defaults.ALL_CAPABILITIES)) - 1


def _status(tmp_path, prm: int, eff: int) -> str:
    path = tmp_path / "status"
    path.write_text(f"Name:\tx\nCapInh:\t0000000000000000\nCapPrm:\t{prm:016x}\n"
                    f"CapEff:\t{eff:016x}\nCapBnd:\t{prm:016x}\n")
    return str(path)


def test_capabilities_held_and_the_nofile_ceiling(tmp_path):
    nr_open = tmp_path / "nr_open"
    nr_open.write_text("1048576\n")
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    no_time = FULL & ~(1 << defaults.ALL_CAPABILITIES.index("CAP_SYS_TIME"))
    held, limit, why = host.launcher_limits(False, status=_status(tmp_path, no_time, no_time),
                                            nr_open=str(nr_open))
    assert "CAP_SYS_TIME" not in held and "CAP_SYS_ADMIN" in held
    assert limit == 1048576 and why == "fs.nr_open"          # it holds CAP_SYS_RESOURCE
    no_resource = FULL & ~(1 << host.CAP_SYS_RESOURCE)
    _, limit, why = host.launcher_limits(False, nr_open=str(nr_open),
                                         status=_status(tmp_path, no_resource, no_resource))
    assert limit == min(hard, 1048576)
    assert limit == 1048576 or "CAP_SYS_RESOURCE" in why
    _, limit, why = host.launcher_limits(True, status=_status(tmp_path, 0, 0),
                                         nr_open=str(nr_open))
    assert limit == min(hard, 1048576)


def test_etc_files_are_made_from_the_hosts_and_written_by_no_one_here():
    """The plan gets their content; create writes them into the container's directory (api
    Plan.files), so planning (and `minictr spec`) writes nothing."""
    texts = {"/etc/resolv.conf": "nameserver 10.1.1.1\n", "/etc/hosts": "127.0.0.1 localhost\n"}
    opts = RunOptions(image="x", add_hosts=("db:10.0.0.5",))
    files, notes = host.etc_files(opts, "box", read=lambda p: texts.get(p, ""))
    assert set(files) == {"/etc/resolv.conf", "/etc/hosts", "/etc/hostname"}
    assert files["/etc/hosts"] == b"127.0.0.1 localhost\n127.0.1.1\tbox\n10.0.0.5\tdb\n"
    assert files["/etc/resolv.conf"] == b"nameserver 10.1.1.1\n"
    assert notes == []
