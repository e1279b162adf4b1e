"""The seccomp deny-list every run gets: a classic-BPF program built here, in Python.

Why a deny-list: the namespaces, the unprivileged uid, ``--cap-drop ALL`` and the cgroup
already decide *what* a run may touch; seccomp removes kernel entry points a run has no use
for and that are the usual first step of an escape or a kernel exploit — nested user
namespaces (which hand out a fresh full capability set), keyrings, eBPF, ptrace, every mount
API, perf events, module and kexec loading, userfaultfd, setns, swap, reboot, acct, io_uring…
An allow-list would have to follow every interpreter and compiler a deployment adds
(``CODESYNC_RUNNER_LANGUAGES``); a deny-list of dangerous calls does not.

Why build the BPF ourselves rather than use libseccomp: the program is ~90 instructions of
three kinds (compare the syscall number, test a flags argument, return), the layout it reads
(``struct seccomp_data``: ``nr`` at 0, ``arch`` at 4, ``args[i]`` at 16 + 8·i) is stable
kernel ABI, and the result is plain bytes that ``bwrap --seccomp FD`` loads and that the
Docker backend stacks on top of Docker's own default profile (``prctl(PR_SET_SECCOMP)`` in
the run container). libseccomp's Python binding (``python3-seccomp``) exists only for the
Debian system interpreter, not for the project's virtualenv, and PyPI has no maintained
build of it; a dependency that is half the size of the code it replaces is not worth that.
``tests/test_sandbox_abuse.py`` checks the syscall numbers against the kernel headers and
every rule against the real kernel.

The program:

1. ``arch`` must be the architecture the table was built for, else the process is killed
   (a 32-bit ``int 0x80`` on x86_64 arrives as AUDIT_ARCH_I386 with other numbers and
   would otherwise walk past every rule). On x86_64, x32 calls (``nr`` with bit 30 set,
   same AUDIT_ARCH_X86_64) are killed too.
2. Denied syscalls return ``EPERM`` (a clear "Operation not permitted" in the user's
   program, not a crash).
3. ``clone3`` returns ``ENOSYS``: its flags sit behind a pointer BPF cannot follow, so it
   is refused as "not implemented" and glibc falls back to ``clone``, whose flags are an
   argument we can test.
4. ``unshare`` and ``clone`` with any namespace flag (``CLONE_NEWUSER`` foremost) return
   ``EPERM``; plain fork/thread creation passes.
"""

from __future__ import annotations

import errno
import platform
import struct
from dataclasses import dataclass

# linux/audit.h
AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_AARCH64 = 0xC00000B7
X32_SYSCALL_BIT = 0x40000000

# linux/seccomp.h
SECCOMP_RET_KILL_PROCESS = 0x80000000
SECCOMP_RET_ERRNO = 0x00050000
SECCOMP_RET_ALLOW = 0x7FFF0000

# linux/bpf_common.h / linux/filter.h
BPF_LD_W_ABS = 0x00 | 0x00 | 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x05 | 0x10 | 0x00  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x05 | 0x30 | 0x00  # BPF_JMP | BPF_JGE | BPF_K
BPF_JSET_K = 0x05 | 0x40 | 0x00  # BPF_JMP | BPF_JSET | BPF_K
BPF_RET_K = 0x06 | 0x00  # BPF_RET | BPF_K

# struct seccomp_data offsets (little-endian: the low 32 bits of args[i] come first)
OFFSET_NR = 0
OFFSET_ARCH = 4
OFFSET_ARG0_LOW = 16

# linux/sched.h
CLONE_NEWTIME = 0x00000080  # unshare/clone3 only: in clone() this bit is part of the exit signal
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACES = CLONE_NEWNS | CLONE_NEWCGROUP | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWUSER | CLONE_NEWPID | CLONE_NEWNET
UNSHARE_NAMESPACES = CLONE_NAMESPACES | CLONE_NEWTIME

# Syscall numbers: name -> (x86_64, aarch64/generic). None: the call does not exist there.
SYSCALLS: dict[str, tuple[int | None, int | None]] = {
    # tracing another process, reading/writing its memory, stealing its fds
    "ptrace": (101, 117),
    "process_vm_readv": (310, 270),
    "process_vm_writev": (311, 271),
    "kcmp": (312, 272),
    "pidfd_getfd": (438, 438),
    # kernel keyrings (shared per uid across the host's user namespaces)
    "keyctl": (250, 219),
    "add_key": (248, 217),
    "request_key": (249, 218),
    # eBPF and perf: big, frequently exploited kernel surfaces
    "bpf": (321, 280),
    "perf_event_open": (298, 241),
    "userfaultfd": (323, 282),  # makes kernel races easy to win
    "io_uring_setup": (425, 425),
    "io_uring_enter": (426, 426),
    "io_uring_register": (427, 427),
    # mounts, old and new API
    "mount": (165, 40),
    "umount2": (166, 39),
    "pivot_root": (155, 41),
    "chroot": (161, 51),
    "move_mount": (429, 429),
    "open_tree": (428, 428),
    "fsopen": (430, 430),
    "fsconfig": (431, 431),
    "fsmount": (432, 432),
    "fspick": (433, 433),
    "mount_setattr": (442, 442),
    # namespaces: joining one (creating one is filtered on the flags below)
    "setns": (308, 268),
    # the machine itself
    "kexec_load": (246, 104),
    "kexec_file_load": (320, 294),
    "init_module": (175, 105),
    "finit_module": (313, 273),
    "delete_module": (176, 106),
    "create_module": (174, None),
    "swapon": (167, 224),
    "swapoff": (168, 225),
    "reboot": (169, 142),
    "acct": (163, 89),
    "quotactl": (179, 60),
    "quotactl_fd": (443, 443),
    "open_by_handle_at": (304, 265),  # the classic container breakout (with CAP_DAC_READ_SEARCH)
    "name_to_handle_at": (303, 264),
    "lookup_dcookie": (212, 18),
    "fanotify_init": (300, 262),
    "iopl": (172, None),
    "ioperm": (173, None),
    "settimeofday": (164, 170),
    "clock_settime": (227, 112),
    "clock_adjtime": (305, 266),
    "sethostname": (170, 161),
    "setdomainname": (171, 162),
    "syslog": (103, 116),
    "vhangup": (153, 58),
    "uselib": (134, None),
    "_sysctl": (156, None),
    "nfsservctl": (180, 42),
}
# Filtered on arguments or answered specially (not in the plain EPERM list).
SPECIAL: dict[str, tuple[int, int]] = {
    "clone": (56, 220),
    "clone3": (435, 435),
    "unshare": (272, 97),
}
DENIED = tuple(SYSCALLS)


@dataclass(frozen=True)
class Arch:
    name: str
    audit: int
    column: int  # index into the SYSCALLS / SPECIAL tuples
    x32: bool  # kill calls with the x32 bit set


ARCHES = {
    "x86_64": Arch("x86_64", AUDIT_ARCH_X86_64, 0, True),
    "aarch64": Arch("aarch64", AUDIT_ARCH_AARCH64, 1, False),
}
MACHINE_ALIASES = {"amd64": "x86_64", "arm64": "aarch64"}


class SeccompUnsupported(RuntimeError):
    """No syscall table for this architecture: the sandbox refuses to run unfiltered."""


def arch_for(machine: str | None = None) -> Arch:
    name = (machine or platform.machine()).lower()
    name = MACHINE_ALIASES.get(name, name)
    try:
        return ARCHES[name]
    except KeyError:
        raise SeccompUnsupported(
            f"no seccomp syscall table for {name!r} (known: {', '.join(ARCHES)}); refusing to run unfiltered"
        ) from None


class _Program:
    """A tiny assembler: instructions with symbolic jump targets, resolved at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def load(self, offset: int) -> None:
        self.code.append((BPF_LD_W_ABS, 0, 0, offset))

    def jump(self, op: int, k: int, true: str | int = 0, false: str | int = 0) -> None:
        self.code.append((op, true, false, k))

    def ret(self, value: int) -> None:
        self.code.append((BPF_RET_K, 0, 0, value))

    def assemble(self) -> bytes:
        out = bytearray()
        for index, (op, jt, jf, k) in enumerate(self.code):
            out += struct.pack("<HBBI", op, self._offset(index, jt), self._offset(index, jf), k & 0xFFFFFFFF)
        return bytes(out)

    def _offset(self, index: int, target: str | int) -> int:
        if isinstance(target, int):
            return target
        offset = self.labels[target] - index - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"BPF jump to {target} out of range ({offset})")
        return offset


def build_filter(machine: str | None = None) -> bytes:
    """The filter for ``machine`` (default: this host) as ``struct sock_filter[]`` bytes."""
    arch = arch_for(machine)
    p = _Program()
    p.load(OFFSET_ARCH)
    p.jump(BPF_JEQ_K, arch.audit, true=0, false="kill")
    p.load(OFFSET_NR)
    if arch.x32:
        p.jump(BPF_JGE_K, X32_SYSCALL_BIT, true="kill", false=0)
    for name in DENIED:
        nr = SYSCALLS[name][arch.column]
        if nr is not None:
            p.jump(BPF_JEQ_K, nr, true="eperm")
    p.jump(BPF_JEQ_K, SPECIAL["clone3"][arch.column], true="enosys")
    p.jump(BPF_JEQ_K, SPECIAL["unshare"][arch.column], true="unshare")
    p.jump(BPF_JEQ_K, SPECIAL["clone"][arch.column], true="clone")
    p.ret(SECCOMP_RET_ALLOW)
    p.label("unshare")
    p.load(OFFSET_ARG0_LOW)
    p.jump(BPF_JSET_K, UNSHARE_NAMESPACES, true="eperm")
    p.ret(SECCOMP_RET_ALLOW)
    p.label("clone")
    p.load(OFFSET_ARG0_LOW)  # clone(flags, ...) on both x86_64 and aarch64
    p.jump(BPF_JSET_K, CLONE_NAMESPACES, true="eperm")
    p.ret(SECCOMP_RET_ALLOW)
    p.label("eperm")
    p.ret(SECCOMP_RET_ERRNO | errno.EPERM)
    p.label("enosys")
    p.ret(SECCOMP_RET_ERRNO | errno.ENOSYS)
    p.label("kill")
    p.ret(SECCOMP_RET_KILL_PROCESS)
    return p.assemble()


# Loads a filter given as base64 in argv[1] into the current process, then execs argv[2:].
# Used inside Docker run containers, where Docker's default profile is already in force and
# this one stacks on it (filters only ever add restrictions). prctl(PR_SET_SECCOMP) rather
# than the seccomp() syscall: the same call on every architecture. The container already
# runs with no-new-privileges; setting it again is harmless and makes the load legal anyway.
LOADER = (
    "import base64,ctypes,os,sys\n"
    "f=base64.b64decode(sys.argv[1]);b=ctypes.create_string_buffer(f,len(f))\n"
    "class P(ctypes.Structure):_fields_=[('n',ctypes.c_ushort),('f',ctypes.c_void_p)]\n"
    "p=P(len(f)//8,ctypes.addressof(b));c=ctypes.CDLL(None,use_errno=True)\n"
    "if c.prctl(38,1,0,0,0) or c.prctl(22,2,ctypes.byref(p),0,0):\n"
    " sys.stderr.write('sandbox: cannot load the seccomp filter: %s\\n'%os.strerror(ctypes.get_errno()));sys.exit(126)\n"
    "os.execv(sys.argv[2],sys.argv[2:])\n"
)
