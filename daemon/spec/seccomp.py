"""pyctr's RuntimeDefault seccomp profile, and the CRI's profile choices.

The default profile is an allow-list: any syscall not named here fails with
EPERM. It lets ordinary programs (shells, language runtimes, servers, package
managers) run, and keeps out what lets a process leave or reshape its
container or reach the kernel's rarely-audited corners: new namespaces
(unshare, setns, clone with namespace flags), mounts, the kernel keyring,
ptrace and cross-process memory access, module loading, BPF, perf, clock and
reboot control. Some of those come back when the container holds the
capability that guards them anyway (a container given CAP_SYS_ADMIN may
mount), the way Docker's and containerd's defaults behave.

The lists are data, grouped by purpose; `runtime_default(caps)` assembles
the OCI `linux.seccomp` object for a container with capability set `caps`.
Names libseccomp does not know on this architecture are skipped by runc, so
the 32-bit compatibility names can sit in the same lists.
"""

from __future__ import annotations

import errno
import json
import platform
from typing import Any

from pyctr.daemon.errors import InvalidArgument

# Largest profile file a Localhost reference may name.
MAX_PROFILE_BYTES = 1 << 20

_FILES_AND_IO = """
read write readv writev pread64 pwrite64 preadv pwritev preadv2 pwritev2
open openat openat2 creat close close_range lseek _llseek dup dup2 dup3
stat fstat lstat newfstatat statx stat64 fstat64 lstat64 fstatat64 statfs fstatfs
statfs64 fstatfs64 access faccessat faccessat2 readlink readlinkat
getdents getdents64 getcwd chdir fchdir
mkdir mkdirat rmdir rename renameat renameat2 link linkat unlink unlinkat
symlink symlinkat chmod fchmod fchmodat chown fchown lchown fchownat
chown32 fchown32 lchown32 umask truncate ftruncate truncate64 ftruncate64
fallocate fadvise64 fadvise64_64 arm_fadvise64_64 readahead sync syncfs fsync fdatasync
sync_file_range sync_file_range2 arm_sync_file_range
utime utimes utimensat utimensat_time64 futimesat
fcntl fcntl64 flock ioctl
sendfile sendfile64 splice tee vmsplice copy_file_range
setxattr lsetxattr fsetxattr getxattr lgetxattr fgetxattr
listxattr llistxattr flistxattr removexattr lremovexattr fremovexattr
mknod mknodat memfd_create
inotify_init inotify_init1 inotify_add_watch inotify_rm_watch
fanotify_mark
"""

_POLLING_AND_EVENTS = """
select _newselect pselect6 pselect6_time64 poll ppoll ppoll_time64
epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_wait epoll_wait_old
epoll_pwait epoll_pwait2 eventfd eventfd2 signalfd signalfd4
timerfd_create timerfd_settime timerfd_gettime timerfd_settime64 timerfd_gettime64
pipe pipe2
io_setup io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_submit io_cancel
"""

_MEMORY = """
brk mmap mmap2 munmap mremap mprotect pkey_mprotect pkey_alloc pkey_free
msync mincore madvise mlock mlock2 munlock mlockall munlockall membarrier
remap_file_pages
"""

_PROCESSES = """
fork vfork execve execveat exit exit_group wait4 waitid waitpid
getpid getppid gettid getpgid setpgid getpgrp getsid setsid
getuid getuid32 geteuid geteuid32 getgid getgid32 getegid getegid32
setuid setuid32 setgid setgid32 setreuid setreuid32 setregid setregid32
setresuid setresuid32 getresuid getresuid32 setresgid setresgid32 getresgid getresgid32
setfsuid setfsuid32 setfsgid setfsgid32 getgroups getgroups32 setgroups setgroups32
capget capset prctl arch_prctl set_tid_address set_thread_area get_thread_area
set_robust_list get_robust_list rseq restart_syscall
getrlimit ugetrlimit setrlimit prlimit64 getrusage times sysinfo uname olduname
getpriority setpriority ioprio_get ioprio_set getcpu
sched_yield sched_setparam sched_getparam sched_setscheduler sched_getscheduler
sched_get_priority_max sched_get_priority_min sched_rr_get_interval
sched_rr_get_interval_time64 sched_setaffinity sched_getaffinity
sched_setattr sched_getattr
pidfd_open pidfd_send_signal
"""

_SIGNALS_AND_TIME = """
kill tkill tgkill rt_sigaction rt_sigprocmask rt_sigreturn sigreturn rt_sigpending
rt_sigtimedwait rt_sigtimedwait_time64 rt_sigqueueinfo rt_tgsigqueueinfo
rt_sigsuspend sigaltstack sigaction sigprocmask sigsuspend signal pause
nanosleep clock_nanosleep clock_nanosleep_time64 alarm getitimer setitimer
time gettimeofday clock_gettime clock_gettime64 clock_getres clock_getres_time64
timer_create timer_settime timer_settime64 timer_gettime timer_gettime64
timer_getoverrun timer_delete
futex futex_time64 futex_waitv futex_wait futex_wake futex_requeue
getrandom
"""

_IPC_AND_NETWORK = """
socket socketpair socketcall bind listen accept accept4 connect shutdown
getsockname getpeername setsockopt getsockopt
sendto recvfrom sendmsg recvmsg sendmmsg recvmmsg recvmmsg_time64 send recv
shmget shmat shmdt shmctl semget semop semctl semtimedop semtimedop_time64
msgget msgsnd msgrcv msgctl ipc
mq_open mq_unlink mq_timedsend mq_timedsend_time64 mq_timedreceive
mq_timedreceive_time64 mq_notify mq_getsetattr
"""

_ARCH_SPECIFIC = """
breakpoint cacheflush set_tls arm_fadvise64_64 riscv_flush_icache
"""

# Allowed only when the container holds the capability that guards them.
_BY_CAPABILITY: dict[str, str] = {
    "CAP_SYS_ADMIN": """
        mount umount umount2 pivot_root unshare setns
        fsopen fsconfig fsmount fspick move_mount open_tree mount_setattr
        sethostname setdomainname quotactl quotactl_fd swapon swapoff
        name_to_handle_at lookup_dcookie fanotify_init vm86 vm86old
        bpf perf_event_open clone3
    """,
    "CAP_SYS_CHROOT": "chroot",
    "CAP_SYS_PTRACE": "ptrace process_vm_readv process_vm_writev kcmp pidfd_getfd",
    "CAP_SYS_MODULE": "init_module finit_module delete_module",
    "CAP_SYS_BOOT": "reboot kexec_load kexec_file_load",
    "CAP_SYS_TIME": "settimeofday stime clock_settime clock_settime64 adjtimex clock_adjtime",
    "CAP_SYS_PACCT": "acct",
    "CAP_SYS_RAWIO": "iopl ioperm",
    "CAP_SYS_NICE": "get_mempolicy set_mempolicy mbind migrate_pages move_pages",
    "CAP_SYS_TTY_CONFIG": "vhangup",
    "CAP_DAC_READ_SEARCH": "open_by_handle_at",
    "CAP_SYSLOG": "syslog",
    "CAP_BPF": "bpf",
    "CAP_PERFMON": "perf_event_open",
}

# The namespace bits of clone(2)'s flags: CLONE_NEWNS, CLONE_NEWCGROUP,
# CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET.
CLONE_NAMESPACE_FLAGS = 0x00020000 | 0x02000000 | 0x04000000 | 0x08000000
CLONE_NAMESPACE_FLAGS |= 0x10000000 | 0x20000000 | 0x40000000

# personality(2) values that only pick an execution domain quirk, as glibc
# and some tools set them: PER_LINUX, PER_LINUX32, UNAME26 variants, query.
_PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

_ARCHES = {
    "x86_64": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"],
    "aarch64": ["SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"],
    "ppc64le": ["SCMP_ARCH_PPC64LE"],
    "s390x": ["SCMP_ARCH_S390X", "SCMP_ARCH_S390"],
    "riscv64": ["SCMP_ARCH_RISCV64"],
}


def _names(*blocks: str) -> list[str]:
    seen: dict[str, None] = {}
    for block in blocks:
        for name in block.split():
            seen[name] = None
    return list(seen)


def allowed_syscalls(caps: list[str] | set[str]) -> list[str]:
    """Every syscall the default profile allows outright for this cap set."""
    blocks = [_FILES_AND_IO, _POLLING_AND_EVENTS, _MEMORY, _PROCESSES]
    blocks += [_SIGNALS_AND_TIME, _IPC_AND_NETWORK, _ARCH_SPECIFIC]
    blocks += [names for cap, names in _BY_CAPABILITY.items() if cap in caps]
    return _names(*blocks)


def runtime_default(caps: list[str] | set[str], machine: str | None = None) -> dict[str, Any]:
    """The OCI `linux.seccomp` object of the default profile for `caps`."""
    caps = set(caps)
    machine = machine or platform.machine()
    rules: list[dict[str, Any]] = [{"names": allowed_syscalls(caps), "action": "SCMP_ACT_ALLOW"}]
    # personality: one rule per permitted value (rules OR together).
    for value in _PERSONALITIES:
        rules.append(
            {
                "names": ["personality"],
                "action": "SCMP_ACT_ALLOW",
                "args": [{"index": 0, "value": value, "op": "SCMP_CMP_EQ"}],
            }
        )
    if "CAP_SYS_ADMIN" in caps:
        rules.append({"names": ["clone"], "action": "SCMP_ACT_ALLOW"})
    else:
        # clone without namespace flags only. Its flags are argument 0 on
        # every architecture pyctr supports except s390x, where it is 1.
        index = 1 if machine == "s390x" else 0
        rules.append(
            {
                "names": ["clone"],
                "action": "SCMP_ACT_ALLOW",
                "args": [
                    {
                        "index": index,
                        "value": CLONE_NAMESPACE_FLAGS,
                        "valueTwo": 0,
                        "op": "SCMP_CMP_MASKED_EQ",
                    }
                ],
            }
        )
        # clone3 passes its flags in memory, out of seccomp's reach: answer
        # ENOSYS so libc falls back to clone, which the rule above checks.
        rules.append({"names": ["clone3"], "action": "SCMP_ACT_ERRNO", "errnoRet": errno.ENOSYS})
    return {
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": errno.EPERM,
        "architectures": _ARCHES.get(machine, []),
        "syscalls": rules,
    }


def load_localhost(path: str) -> dict[str, Any]:
    """A profile file on the node (Localhost), checked enough to give a clear error."""
    if not path.startswith("/"):
        raise InvalidArgument(f"seccomp profile path {path!r} must be absolute")
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_PROFILE_BYTES + 1)
    except OSError as e:
        raise InvalidArgument(f"cannot read seccomp profile {path}: {e.strerror}") from None
    if len(data) > MAX_PROFILE_BYTES:
        raise InvalidArgument(f"seccomp profile {path} is larger than {MAX_PROFILE_BYTES} bytes")
    try:
        profile = json.loads(data)
    except ValueError as e:
        raise InvalidArgument(f"seccomp profile {path} is not JSON: {e}") from None
    if not isinstance(profile, dict) or not isinstance(profile.get("defaultAction"), str):
        raise InvalidArgument(f"seccomp profile {path} has no defaultAction")
    return _to_oci(profile)


def _to_oci(profile: dict[str, Any]) -> dict[str, Any]:
    """Docker-format profiles list `archMap`; OCI wants `architectures`."""
    out = {k: v for k, v in profile.items() if k in _OCI_KEYS}
    if "architectures" not in out and isinstance(profile.get("archMap"), list):
        machine = platform.machine()
        wanted = set(_ARCHES.get(machine, []))
        arches: list[str] = []
        for entry in profile["archMap"]:
            if isinstance(entry, dict) and entry.get("architecture") in wanted:
                arches.append(entry["architecture"])
                arches += [a for a in entry.get("subArchitectures") or [] if isinstance(a, str)]
        out["architectures"] = arches
    syscalls = []
    for rule in profile.get("syscalls") or []:
        if not isinstance(rule, dict):
            raise InvalidArgument("seccomp profile: a syscalls entry is not an object")
        names = rule.get("names") or ([rule["name"]] if isinstance(rule.get("name"), str) else [])
        syscalls.append({k: v for k, v in {**rule, "names": names}.items() if k in _RULE_KEYS})
    out["syscalls"] = syscalls
    return out


_OCI_KEYS = {"defaultAction", "defaultErrnoRet", "architectures", "flags", "listenerPath",
             "listenerMetadata", "syscalls"}  # fmt: skip
_RULE_KEYS = {"names", "action", "errnoRet", "args"}
