"""python -m rootfs_tools SUBCOMMAND ...: make OCI image layouts for tests, the demo, benchmarks.

Every subcommand writes (or adds a tag to) the OCI layout directory OUT; ``--archive FILE`` also
writes it as an oci-archive tar. Then: ``minictr run oci:OUT:TAG``, ``skopeo inspect oci:OUT:TAG``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from . import ToolError, build
from .oci import ImageConfig, write_archive
from .tarball import COMPRESSIONS, Normalize


def _config(args) -> ImageConfig:
    config = ImageConfig()
    if args.env:
        config.env = config.env + args.env
    config.cmd = args.cmd
    config.entrypoint = args.entrypoint
    config.working_dir = args.workdir
    config.user = args.user
    config.labels = dict(label.split("=", 1) for label in args.label or [])
    return config


def cmd_from_dir(args):
    norm = Normalize(owner=None if args.keep_owners else (0, 0), mtime=args.mtime)
    return build.from_dir(args.out, args.dir, _config(args), tag=args.tag,
                          compression=args.compression, norm=norm)


def cmd_busybox(args):
    return build.busybox(args.out, tag=args.tag, compression=args.compression)


def cmd_host_binaries(args):
    return build.host_binaries(args.out, args.binaries, tag=args.tag, compression=args.compression)


def cmd_probe(args):
    return build.probe(args.out, tag=args.tag, compression=args.compression)


def cmd_demo(args):
    return build.demo(args.out, tag=args.tag, compression=args.compression)


def cmd_debootstrap(args):
    if args.variant != "minbase":
        raise ToolError("only --variant minbase is supported")
    return build.debian(args.out, tag=args.tag, layers=args.layers, compression=args.compression,
                        mirror=args.mirror, log=sys.stderr)


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m rootfs_tools", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    subs = top.add_subparsers(dest="command", required=True)

    def add(name, func, help_text):
        p = subs.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(func=func)
        p.add_argument("out", help="OCI layout directory to write (created if needed)")
        p.add_argument("--tag", default="latest")
        p.add_argument("--compression", choices=COMPRESSIONS, default="gzip")
        p.add_argument("--archive", metavar="FILE", help="also write the layout as an oci-archive")
        return p

    p = add("from-dir", cmd_from_dir, "one layer from a directory")
    p.add_argument("dir")
    p.add_argument("--cmd", nargs="+")
    p.add_argument("--entrypoint", nargs="+")
    p.add_argument("--env", action="append", metavar="K=V")
    p.add_argument("--workdir")
    p.add_argument("--user")
    p.add_argument("--label", action="append", metavar="K=V")
    p.add_argument("--keep-owners", action="store_true", help="keep file uids/gids (default 0:0)")
    p.add_argument("--mtime", type=int, help="set every entry's mtime (e.g. $SOURCE_DATE_EPOCH)")
    add("busybox", cmd_busybox, "busybox-static with applet links, /etc/passwd, /tmp")
    p = add("host-binaries", cmd_host_binaries, "host binaries plus their loader and libraries")
    p.add_argument("binaries", nargs="+", metavar="BIN")
    add("probe", cmd_probe, "busybox plus /probe (compiled with gcc -static)")
    add("demo", cmd_demo, "busybox plus /demo.sh, what `make run` shows")
    p = add("debootstrap", cmd_debootstrap, "Debian bookworm minbase (root, network to the mirror)")
    p.add_argument("--variant", default="minbase")
    p.add_argument("--layers", type=int, default=1, help=">= 2: last layer holds whiteouts")
    p.add_argument("--mirror", help="default: the bookworm mirror in /etc/apt/sources.list*")
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        desc = args.func(args)
        if args.archive:
            write_archive(args.out, args.archive)
    except ToolError as err:
        print(f"rootfs_tools: error: {err}", file=sys.stderr)
        if err.hint:
            print(f"rootfs_tools: hint: {err.hint}", file=sys.stderr)
        return 1
    except OSError as err:
        print(f"rootfs_tools: error: {err}", file=sys.stderr)
        return 1
    layout = os.path.abspath(args.out)
    print(json.dumps({"layout": layout, "tag": args.tag, "manifest": desc.digest,
                      "ref": f"oci:{layout}:{args.tag}"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
