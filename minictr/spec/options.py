"""What a user asked for on the command line, as plain data: the builder's input.

``cli`` fills a ``RunOptions``; ``api.plan`` turns image config + RunOptions into an OCI runtime
spec. Field names follow docker's flags.
"""
from __future__ import annotations

from minictr.records import record


@record
class RunOptions:
    image: str
    command: tuple[str, ...] = ()            # after IMAGE; replaces the image's Cmd
    entrypoint: str | None = None            # --entrypoint ("" clears the image's)
    env: tuple[str, ...] = ()                # -e KEY=VAL or -e KEY (taken from the host)
    env_files: tuple[str, ...] = ()          # --env-file
    volumes: tuple[str, ...] = ()            # -v SRC:DST[:ro|rw]
    mounts: tuple[str, ...] = ()             # --mount type=bind,src=..,dst=..,ro
    tmpfs: tuple[str, ...] = ()              # --tmpfs DST[:opts]
    workdir: str | None = None               # -w
    user: str | None = None                  # -u USER[:GROUP]
    hostname: str | None = None
    name: str | None = None
    rm: bool = False
    interactive: bool = False                # -i
    tty: bool = False                        # -t
    read_only: bool = False
    init: bool = False
    network: str | None = None               # None (not given) | host | none | bridge |
                                             # container:NAME | ns:PATH (spec/network.py)
    publish: tuple[str, ...] = ()            # -p [IP:]HOSTPORT:CONTAINERPORT[/tcp|udp]
    cap_add: tuple[str, ...] = ()
    cap_drop: tuple[str, ...] = ()
    preserve_fds: int = 0
    ulimits: tuple[str, ...] = ()            # --ulimit nofile=1024:2048
    privileged: bool = False
    userns: str | None = None                # None (auto) | keep-id | host
    # limits (issue 5)
    memory: str | None = None
    memory_swap: str | None = None
    pids_limit: int | None = None
    cpus: float | None = None
    cpu_shares: int | None = None
    cpu_weight: int | None = None
    cpuset_cpus: str | None = None
    cgroup_parent: str | None = None
    devices: tuple[str, ...] = ()            # --device HOST[:CONTAINER][:rwm] or CDI names
    # GPUs (issue 6)
    gpus: str | None = None
    gpu_memory: str | None = None
    annotations: tuple[str, ...] = ()
    security_opts: tuple[str, ...] = ()      # --security-opt seccomp=FILE, no-new-privileges=BOOL
    hpc: bool = False                        # --hpc: job-native mode (spec/native.py)
    # namespaces shared with the host (docker's --ipc host, --pid host), /dev/shm's size
    ipc: str = "private"                     # private | host
    pid: str = "private"                     # private | host
    shm_size: str | None = None              # --shm-size 1g (default 64m, as docker)
    # /etc/resolv.conf, /etc/hosts (written per container, see spec/etcfiles.py)
    dns: tuple[str, ...] = ()                # --dns IP
    dns_search: tuple[str, ...] = ()         # --dns-search DOMAIN ("." for none)
    dns_options: tuple[str, ...] = ()        # --dns-option ndots:2
    add_hosts: tuple[str, ...] = ()          # --add-host NAME:IP
    group_add: tuple[str, ...] = ()          # --group-add GROUP (name in the image, or gid)
    labels: tuple[str, ...] = ()             # --label KEY=VALUE
    stop_signal: str | None = None           # --stop-signal (default: the image's, else TERM)
    stop_timeout: int | None = None          # --stop-timeout seconds (default 10)
    sysctls: tuple[str, ...] = ()            # --sysctl KEY=VALUE (namespaced ones only)
    # which image: how `run` pulls it (not part of the spec)
    platform: str | None = None              # --platform os/arch[/variant]
    tls_verify: bool | None = None           # --tls-verify=false: plain http, unverified TLS
