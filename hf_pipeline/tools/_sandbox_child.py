"""Runs inside the sandbox's child process (``python -I -S``): lock the process down, then run the code.

Read by ``hf_pipeline.tools.python`` and passed to the child with ``-c`` (it never imports the package: the child
sees the standard library only). argv: ``limits`` as JSON. The code arrives on stdin. The order matters: read the
code, set the resource limits, then Landlock (files, TCP, signals) and seccomp (no new processes, threads or sockets), which need
``no_new_privs``; then run the code as ``__main__``. What could not be applied is the first line of stderr (JSON), written
before the code runs (the parent reads it to report what the sandbox guarantees).
"""
import ctypes
import json
import os
import resource
import struct
import sys

limits = json.loads(sys.argv[1])
code = sys.stdin.read()
sys.stdin = open(os.devnull)
applied = {}

resource.setrlimit(resource.RLIMIT_CPU, (limits["cpu_seconds"], limits["cpu_seconds"] + 1))  # SIGXCPU, then SIGKILL
for name, value in (("RLIMIT_AS", limits["memory_bytes"]), ("RLIMIT_FSIZE", limits["file_bytes"]),
                    ("RLIMIT_NPROC", limits["processes"]), ("RLIMIT_CORE", 0)):
    resource.setrlimit(getattr(resource, name), (value, value))

libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
libc.prctl(38, 1, 0, 0, 0)  # PR_SET_NO_NEW_PRIVS: required by Landlock and seccomp for an unprivileged process

# Landlock (Linux >= 5.13): reads below the Python installation and the system libraries, reads and writes below the
# working directory, nothing else; with ABI >= 4 also no TCP connect/bind. Syscalls 444-446 on every architecture.
abi = libc.syscall(444, None, 0, 1)  # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
applied["landlock_abi"] = max(int(abi), 0)
if abi >= 1:
    read = (1 << 0) | (1 << 2) | (1 << 3)  # EXECUTE, READ_FILE, READ_DIR
    every = (1 << 13) - 1 | ((1 << 13) if abi >= 2 else 0) | ((1 << 14) if abi >= 3 else 0) \
        | ((1 << 15) if abi >= 5 else 0)
    net = 3 if abi >= 4 else 0  # BIND_TCP | CONNECT_TCP, handled and never allowed
    scoped = 3 if abi >= 6 else 0  # ABSTRACT_UNIX_SOCKET | SIGNAL: no signal, no abstract socket outside the sandbox
    attr = (struct.pack("QQQ", every, net, scoped) if abi >= 6 else struct.pack("QQ", every, net) if abi >= 4
            else struct.pack("Q", every))
    ruleset = libc.syscall(444, ctypes.c_char_p(attr), len(attr), 0)
    ok = ruleset >= 0
    for path, access in [(p, read) for p in limits["read_paths"]] + [(os.getcwd(), every), ("/dev/null", 3 | 4)]:
        try:
            fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
        except OSError:
            continue
        allowed = access if os.path.isdir(path) else access & ((1 << 0) | (1 << 1) | (1 << 2) | (1 << 14))
        rule = struct.pack("=Qi", allowed & every, fd)
        ok = ok and libc.syscall(445, ruleset, 1, ctypes.c_char_p(rule), 0) == 0  # LANDLOCK_RULE_PATH_BENEATH
        os.close(fd)
    ok = ok and libc.syscall(446, ruleset, 0) == 0  # landlock_restrict_self
    applied["filesystem"] = bool(ok)
    applied["tcp"] = bool(ok and net)
    applied["signals"] = bool(ok and scoped)
else:
    applied["filesystem"] = applied["tcp"] = applied["signals"] = False

# seccomp: fork, vfork, clone and clone3 fail with EPERM (no child processes, no threads: a fork bomb stops at once),
# and so do socket and socketpair (no Unix-domain socket of the host: docker.sock, an ssh agent, D-Bus).
ARCH = {"x86_64": (0xC000003E, [57, 58, 56, 435, 41, 53]),
        "aarch64": (0xC00000B7, [220, 435, 198, 199])}.get(os.uname().machine)
applied["processes"] = False
if ARCH:
    audit_arch, blocked = ARCH
    ALLOW, DENY, KILL = 0x7FFF0000, 0x00050000 | 1, 0x80000000  # SECCOMP_RET_ALLOW, _ERRNO | EPERM, _KILL_PROCESS
    prog = [(0x20, 0, 0, 4), (0x15, 1, 0, audit_arch), (0x06, 0, 0, KILL), (0x20, 0, 0, 0),
            (0x35, 0, 1, 0x40000000), (0x06, 0, 0, KILL)]  # other ABIs (i386, x32) are killed
    for i, nr in enumerate(blocked):
        prog.append((0x15, len(blocked) - i, 0, nr))  # -> DENY
    prog += [(0x06, 0, 0, ALLOW), (0x06, 0, 0, DENY)]
    filt = b"".join(struct.pack("HBBI", *ins) for ins in prog)
    buf = ctypes.create_string_buffer(filt)
    fprog = struct.pack("HxxxxxxP", len(prog), ctypes.addressof(buf))
    applied["processes"] = libc.prctl(22, 2, ctypes.c_char_p(fprog), 0, 0) == 0  # PR_SET_SECCOMP, FILTER

resource.setrlimit(resource.RLIMIT_NOFILE, (limits["open_files"], limits["open_files"]))  # after Landlock's fds
sys.stderr.write(json.dumps(applied) + "\n")  # the first line of stderr: the parent reads and removes it
sys.stderr.flush()
del ctypes, json, resource, struct, libc, limits, applied
sys.argv = ["-"]
namespace = {"__name__": "__main__", "__builtins__": __builtins__}
exec(compile(code, "<tool>", "exec"), namespace)
