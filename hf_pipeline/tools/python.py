"""The Python tool: code the model writes runs in a locked-down child process, and its output comes back as text.

    sandbox = PythonSandbox()                # probes what this machine allows, once
    sandbox.guarantees                        # {"network": "namespace", "filesystem": "landlock", ...}
    sandbox("print(415 * 391)")               # '162265'
    sandbox("1/0")                            # 'error: ZeroDivisionError: division by zero'
    sandbox.run("while True: pass")           # SandboxResult(output='error: CPU time limit (2 s) exceeded', ...)

Each call is a fresh ``python -I -S`` process (the interpreter running hf-pipeline, standard library only, no
``site-packages``, no environment variables) in a fresh temporary working directory that is deleted afterwards. The
layers, each applied by the child before the code runs (``_sandbox_child.py``):

- **Resource limits** (``setrlimit``): CPU seconds, address space, open files, file size (which also caps what the
  code can print: stdout and stderr are files in the working directory), processes, no core dumps.
- **No network**: the child runs in a new network namespace (``unshare -rn``: only a loopback that is down, so
  ``connect`` to anything, 127.0.0.1 included, fails). Where the kernel does not allow it, Landlock's TCP rules (Linux
  >= 6.7) deny TCP connect and bind; where neither works, ``network="require"`` (the default) refuses to start and
  ``network="best_effort"`` warns once and runs without.
- **Files** (Landlock, Linux >= 5.13): read-only access below the Python installation and the system libraries,
  read-write below the working directory, nothing else (so neither the caller's files nor ``/etc`` can be read).
- **No new processes, threads or sockets** (a seccomp filter: ``fork``, ``vfork``, ``clone``, ``clone3``,
  ``socket``, ``socketpair`` fail with EPERM): a fork bomb stops at its first fork, and no Unix-domain socket of the
  host (``docker.sock``, an ssh agent) can be reached. ``RLIMIT_NPROC`` is set too (Linux does not apply it to root).
- **No signals out** (Landlock's scopes, Linux >= 6.12): the code cannot signal its caller or any other process.
- **Wall-clock timeout**: the whole process group is killed after ``timeout`` seconds (a ``sleep`` uses no CPU).
- **Output cap**: at most ``max_output_chars`` characters come back (the rest is counted, not returned).

What is not isolated: the code sees the process list and the host name, and can use CPU and memory up to the limits
for the length of the timeout; the file-size limit is per file, so many files can fill the temporary folder's disk
until the timeout (it is deleted after every call). A run where a layer the first run had could not be applied
returns an error, not the output. It is a sandbox for a model's snippets, not for hostile users on a shared machine:
for that, run the whole server in a container or VM. ``PythonSandbox.guarantees`` says which layers this machine
gave; ``hf-pipeline`` logs it when the tool starts.

Errors never raise in the caller: a traceback, a timeout, a limit or a failed start come back as the tool's output
(``error: ...``), which is what the model reads next.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..config import ConfigError

logger = logging.getLogger("hf_pipeline")

CHILD = (Path(__file__).parent / "_sandbox_child.py").read_text()
NETWORK_MODES = ("require", "best_effort")


@dataclass
class SandboxResult:
    """One run: ``output`` is what the model reads (stdout, then ``error: ...`` if the code failed); ``ok`` is
    whether the code ran to the end without an error; ``reason`` names what stopped it (``exception``, ``timeout``,
    ``cpu_limit``, ``memory``, ``output_limit``, ``killed``, ``start_failed``)."""

    output: str
    ok: bool
    reason: str | None = None
    returncode: int | None = None
    seconds: float = 0.0
    stdout_chars: int = 0
    applied: dict = field(default_factory=dict)


@dataclass
class PythonSandbox:
    """Runs code in a child process with the limits below; calling it returns the output text (the tool)."""

    timeout: float = 5.0  # wall-clock seconds
    cpu_seconds: int = 2
    memory_mb: int = 512  # address space
    open_files: int = 32
    file_mb: int = 1  # largest file the code can write (stdout and stderr included)
    processes: int = 1  # RLIMIT_NPROC (seccomp forbids new processes anyway)
    max_output_chars: int = 500
    network: str = "require"  # "require": refuse to start without network isolation; "best_effort": warn, run
    announce: bool = True  # log the layers this machine gave (False: a check that only wants to know it starts)

    def __post_init__(self):
        if self.network not in NETWORK_MODES:
            raise ConfigError(f"python tool: network must be one of {', '.join(NETWORK_MODES)}, not {self.network!r}")
        for name in ("timeout", "cpu_seconds", "memory_mb", "open_files", "file_mb", "processes", "max_output_chars"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"python tool: {name} must be > 0, not {getattr(self, name)!r}")
        self._unshare = _unshare_works()
        probe = self.run("pass")
        if not probe.ok:
            raise ConfigError(f"python tool: the sandbox does not start here ({probe.output})")
        applied = probe.applied
        self._expected = [k for k, v in applied.items() if v is True]
        self.guarantees = {
            "network": "namespace" if self._unshare else ("landlock_tcp" if applied.get("tcp") else "none"),
            "filesystem": "landlock" if applied.get("filesystem") else "none",
            "processes": "seccomp" if applied.get("processes") else "rlimit_nproc",
            "signals": "landlock" if applied.get("signals") else "none",
            "limits": f"cpu {self.cpu_seconds} s, memory {self.memory_mb} MiB, files {self.file_mb} MiB, "
                      f"{self.open_files} open files, wall {self.timeout} s, output {self.max_output_chars} chars",
        }
        missing = [k for k in ("network", "filesystem") if self.guarantees[k] == "none"]
        if self.guarantees["network"] == "none" and self.network == "require":
            raise ConfigError("python tool: no network isolation on this machine (neither `unshare -rn` nor "
                              "Landlock TCP rules work); set the tool's network to best_effort to run without")
        if missing and self.announce:
            logger.warning("python tool: no %s isolation on this machine; running without it", " or ".join(missing))
        if self.announce:
            logger.info("python tool: sandbox %s", ", ".join(f"{k} {v}" for k, v in self.guarantees.items()))

    def __call__(self, code: str) -> str:
        return self.run(code).output

    def command(self) -> list[str]:
        limits = {
            "cpu_seconds": int(self.cpu_seconds), "memory_bytes": int(self.memory_mb) << 20,
            "open_files": int(self.open_files), "file_bytes": int(self.file_mb) << 20,
            "processes": int(self.processes), "read_paths": _read_paths(),
        }
        argv = [sys.executable, "-I", "-S", "-c", CHILD, json.dumps(limits)]
        return (["unshare", "-rn"] + argv) if getattr(self, "_unshare", False) else argv

    def run(self, code: str) -> SandboxResult:
        """Run ``code``; never raises for anything the code does."""
        start = time.perf_counter()
        work = Path(tempfile.mkdtemp(prefix="hfp-python-"))
        try:
            with open(work / ".stdout", "w+b") as out, open(work / ".stderr", "w+b") as err:
                try:
                    proc = subprocess.Popen(self.command(), stdin=subprocess.PIPE, stdout=out, stderr=err, cwd=work,
                                            env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"},
                                            start_new_session=True)
                except OSError as e:
                    return SandboxResult(f"error: the sandbox did not start ({e})", False, "start_failed")
                timed_out = False
                try:
                    proc.communicate(code.encode("utf-8", "replace"), timeout=self.timeout)
                except subprocess.TimeoutExpired:
                    timed_out = True
                finally:
                    _kill_group(proc)
                out.seek(0)
                stdout = out.read(self.max_output_chars * 4 + 4).decode("utf-8", "replace")
                stdout_bytes = os.fstat(out.fileno()).st_size
                err.seek(0)
                stderr = err.read(1 << 16).decode("utf-8", "replace")
            result = self._result(proc.returncode, timed_out, stdout, stdout_bytes, stderr, start)
        finally:
            _remove(work)
        expected = getattr(self, "_expected", None)  # every layer the first run had, or the output is withheld
        if expected and result.applied and any(result.applied.get(k) is not True for k in expected):
            missing = ", ".join(k for k in expected if result.applied.get(k) is not True)
            return SandboxResult(f"error: the sandbox could not apply {missing} for this run", False, "start_failed",
                                 result.returncode, result.seconds)
        return result

    def _result(self, code: int, timed_out: bool, stdout: str, stdout_bytes: int, stderr: str, start) -> SandboxResult:
        first, _, stderr = stderr.partition("\n")
        try:
            applied = json.loads(first)
        except json.JSONDecodeError:  # the child died before it could report: the error is on that line
            applied, stderr = {}, first + "\n" + stderr
        reason = None
        if timed_out:
            reason, message = "timeout", f"timed out after {self.timeout:g} s"
        elif code == -signal.SIGXCPU or code == -signal.SIGKILL and not stderr.strip():
            reason, message = "cpu_limit", f"CPU time limit ({self.cpu_seconds} s) exceeded"
        elif code == -signal.SIGXFSZ or stdout_bytes >= self.file_mb << 20:
            reason, message = "output_limit", f"output over the {self.file_mb} MiB limit"
        elif code != 0:
            last = [line for line in stderr.strip().splitlines() if line.strip()]
            message = last[-1].strip() if last else f"exit status {code}"
            reason = "memory" if message.startswith("MemoryError") else ("exception" if code > 0 else "killed")
        else:
            message = None
        text = stdout
        if len(text) > self.max_output_chars:
            text = text[:self.max_output_chars] + f"... [{stdout_bytes} bytes in all]"
        text = text.rstrip("\n")
        if message:
            text = f"{text}\nerror: {message}" if text else f"error: {message}"
        return SandboxResult(text, reason is None, reason, code, time.perf_counter() - start, len(stdout), applied)


def _remove(path: Path) -> None:
    """Delete the working directory, whatever modes the code left on it (a chmod 0 folder inside)."""
    def unlock(function, name, _):
        os.chmod(os.path.dirname(name), 0o700)
        os.chmod(name, 0o700) if os.path.isdir(name) else None
        function(name)

    shutil.rmtree(path, onerror=unlock)


def _kill_group(proc: subprocess.Popen) -> None:
    """Kill the child's whole session (start_new_session: its group id is its pid) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _read_paths() -> list[str]:
    """What the child may read: the interpreter's installation and the system's libraries."""
    paths = {sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable)), sysconfig.get_paths()["stdlib"],
             "/usr", "/lib", "/lib64", "/bin"}
    return sorted(p for p in paths if os.path.exists(p))


_UNSHARE: bool | None = None


def _unshare_works() -> bool:
    """Whether ``unshare -rn`` can start a process in a new network namespace here (checked once per process)."""
    global _UNSHARE
    if _UNSHARE is None:
        try:
            _UNSHARE = shutil.which("unshare") is not None and subprocess.run(
                ["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
        except (OSError, subprocess.TimeoutExpired):
            _UNSHARE = False
    return _UNSHARE
