#!/bin/sh
# What is a container? A tour from the inside, for `make run`.
#
# This script runs as the container's first process. Nothing here is special to minictr: every
# fact is read from the kernel (/proc, system calls), so the same script tells the truth under
# runc, crun or podman too. Compare with what the same commands print on the host.

if [ -t 1 ]; then bold='\033[1m' plain='\033[0m'; else bold='' plain=''; fi

section() {
    printf "\n${bold}== %s${plain}\n" "$1"
    shift
    for line in "$@"; do printf '   %s\n' "$line"; done
}

section "Who am I?" \
    "A user namespace can map uid 0 inside to an ordinary uid outside (user_namespaces(7))." \
    "Rootless, 'root' here owns nothing on the host."
id
echo "uid_map (inside outside count):"
sed 's/^/   /' /proc/self/uid_map

section "Which machine?" \
    "A UTS namespace gives the container its own hostname (uts_namespaces(7))."
echo "hostname: $(hostname)"

section "Which processes?" \
    "A PID namespace starts a new numbering: this script is PID 1, the 'init' of the container." \
    "Host processes are not even visible (pid_namespaces(7))."
ps -o pid,user,args

section "Which files?" \
    "A mount namespace plus pivot_root(2) makes the image the root directory." \
    "The first mounts of this container (from /proc/self/mountinfo, mount point and type):"
# mountinfo fields (proc(5)): 5 = mount point, then optional fields up to "-", then the type
awk '{ for (i = 7; $i != "-"; i++); printf "   %-24s %s\n", $5, $(i + 1) }' /proc/self/mountinfo |
    head -n 15
echo "   ... $(wc -l < /proc/self/mountinfo) mounts in all; the host has its own, unseen."

section "What may I do?" \
    "Root's powers are split into capabilities (capabilities(7)); a container keeps a few." \
    "CapEff is a bit mask: each 1 bit is one capability, e.g. bit 21 = CAP_SYS_ADMIN."
grep -E '^(Cap(Prm|Eff|Bnd)|NoNewPrivs|Seccomp):' /proc/self/status | sed 's/^/   /'
# capability numbers from linux/capability.h, in order
names="chown dac_override dac_read_search fowner fsetid kill setgid setuid setpcap
linux_immutable net_bind_service net_broadcast net_admin net_raw ipc_lock ipc_owner sys_module
sys_rawio sys_chroot sys_ptrace sys_pacct sys_admin sys_boot sys_nice sys_resource sys_time
sys_tty_config mknod lease audit_write audit_control setfcap mac_override mac_admin syslog
wake_alarm block_suspend audit_read perfmon bpf checkpoint_restore"
eff=$(awk '/^CapEff:/ { print $2 }' /proc/self/status)
bit=0 have=""
for name in $names; do
    [ $(( (0x$eff >> bit) & 1 )) = 1 ] && have="$have $name"
    bit=$((bit + 1))
done
echo "   CapEff decoded:$have" | fold -s -w 96 | sed '2,$s/^/      /'

section "My namespaces" \
    "Each link names a namespace by inode; two processes with the same number share it." \
    "Run 'ls -l /proc/self/ns' on the host: the numbers differ."
ls -l /proc/self/ns | awk 'NR > 1 { print "   " $(NF - 2), $(NF - 1), $NF }'

section "My cgroup" \
    "Control groups limit memory, CPU and processes, and filter devices (cgroups(7))."
sed 's/^/   /' /proc/self/cgroup

if [ -e /dev/nvidiactl ]; then
    section "GPUs" \
        "The GPU device nodes and driver libraries were bind-mounted in from the host."
    ls -l /dev/nvidia* | sed 's/^/   /'
    if command -v nvidia-smi >/dev/null 2>&1; then nvidia-smi -L; fi
fi

section "That is all a container is" \
    "An ordinary process, with namespaces, a different root, fewer capabilities and a cgroup."
