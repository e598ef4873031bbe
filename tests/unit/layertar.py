"""Build small layer tars in memory for the unpack tests (tarfile writes any name we ask for,
including the hostile ones)."""
from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field

TYPES = {"file": tarfile.REGTYPE, "dir": tarfile.DIRTYPE, "symlink": tarfile.SYMTYPE,
         "hardlink": tarfile.LNKTYPE, "char": tarfile.CHRTYPE, "block": tarfile.BLKTYPE,
         "fifo": tarfile.FIFOTYPE}


@dataclass
class M:
    """One tar member."""
    name: str
    type: str = "file"
    data: bytes = b""
    mode: int = 0o644
    uid: int = 0
    gid: int = 0
    mtime: float = 1_600_000_000
    linkname: str = ""
    devmajor: int = 0
    devminor: int = 0
    xattrs: dict[str, str] = field(default_factory=dict)


def F(name, data=b"", **kw) -> M:
    return M(name, "file", data, **kw)


def D(name, **kw) -> M:
    kw.setdefault("mode", 0o755)
    return M(name, "dir", **kw)


def S(name, target, **kw) -> M:
    return M(name, "symlink", linkname=target, **kw)


def H(name, target, **kw) -> M:
    return M(name, "hardlink", linkname=target, **kw)


def make_tar(members: list[M], fmt=tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tf:
        for m in members:
            info = tarfile.TarInfo(m.name)
            info.type = TYPES[m.type]
            info.mode, info.uid, info.gid, info.mtime = m.mode, m.uid, m.gid, m.mtime
            info.linkname = m.linkname
            info.devmajor, info.devminor = m.devmajor, m.devminor
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in m.xattrs.items()}
            if m.type == "file":
                info.size = len(m.data)
                tf.addfile(info, io.BytesIO(m.data))
            else:
                tf.addfile(info)
    return buf.getvalue()
