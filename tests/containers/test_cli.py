"""`pyctr run|ps|inspect|exec|logs|kill|stop|rm|events` as a user types them.

Every command here is the real client in a subprocess, against a real
pyctrd running real containers with runc.
"""

from __future__ import annotations

import datetime
import fcntl
import json
import os
import select
import signal
import struct
import subprocess
import termios
import time

import pytest

from tests.containers.conftest import Ctr, CtrImages, wait_for
from tests.support import cgroups
from tests.support.daemon import PyctrDaemon

pytestmark = pytest.mark.root


class Output:
    """Read what a child writes to an fd (a pipe or a pty master), with deadlines.

    `until` looks for its needle after the previous one found, and returns
    everything read so far.
    """

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = b""
        self.pos = 0

    def until(self, needle: bytes, timeout: float = 15.0) -> bytes:
        deadline = time.monotonic() + timeout
        while (found := self.seen.find(needle, self.pos)) < 0:
            left = deadline - time.monotonic()
            ready, _, _ = select.select([self.fd], [], [], max(0.0, left))
            if not ready:
                raise AssertionError(f"no {needle!r} after {timeout}s in {self.seen[-2000:]!r}")
            try:
                data = os.read(self.fd, 65536)
            except OSError:  # EIO: the pty's other side is gone
                data = b""
            if not data:
                raise AssertionError(f"EOF before {needle!r} in {self.seen[-2000:]!r}")
            self.seen += data
        self.pos = found + len(needle)
        return self.seen


def test_run_rm_prints_output_and_exits_with_the_containers_code(
    pyctrd: PyctrDaemon, ctr_images: CtrImages
) -> None:
    # The image is not there yet: run pulls it first (progress on stderr).
    script = "echo hi; echo oops >&2; exit 7"
    res = pyctrd.ctl("run", "--rm", ctr_images.busybox, "sh", "-c", script)
    assert res.returncode == 7, res.stderr
    assert res.stdout == "hi\n"
    assert "oops\n" in res.stderr and "pulling" in res.stderr
    listed = pyctrd.ctl("ps", "-a", "-o", "json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == []


def test_tty_session_in_a_real_terminal(ctr: Ctr) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 111, 0, 0))
    before = termios.tcgetattr(master)
    argv, env = ctr.cli_cmd("run", "--rm", "-t", "-i", "--name", "tty1", ctr.image, "sh")
    proc = subprocess.Popen(
        argv, env=env, stdin=slave, stdout=slave, stderr=slave, start_new_session=True
    )
    os.close(slave)
    try:
        out = Output(master)
        out.until(b"/ # ")  # busybox's interactive prompt: stdin is a terminal
        assert termios.tcgetattr(master)[3] & termios.ECHO == 0  # ours is raw meanwhile
        os.write(master, b"stty size; echo $((6*7)); tty\r")
        seen = out.until(b"42\r\n")
        assert b"stty size; echo $((6*7)); tty" in seen  # typed input echoed back
        assert b"33 111\r\n" in seen  # the size was there before the shell started
        out.until(b"/dev/pts/")
        # The window changes: SIGWINCH makes the client pass the new size on.
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 44, 99, 0, 0))
        proc.send_signal(signal.SIGWINCH)
        for _ in range(20):  # the resize and our typing travel separately: retry
            # Busybox redraws the line it is editing when the size changes, so
            # the echo of what we type is no marker: "S2" only appears as output.
            os.write(master, b"echo S$((1+1)); stty size\r")
            start = out.until(b"S2\r\n") and out.pos
            if out.until(b"/ # ")[start:].startswith(b"44 99\r\n"):
                break
            time.sleep(0.1)
        else:
            raise AssertionError(f"the new size never arrived: {out.seen[-300:]!r}")
        _exec_in_a_terminal_of_its_own(ctr)
        os.write(master, b"exit 3\r")
        assert proc.wait(15) == 3
        # The client left our terminal as it found it.
        assert termios.tcgetattr(master) == before
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)
    assert ctr.list() == []


def _exec_in_a_terminal_of_its_own(ctr: Ctr) -> None:
    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 12, 34, 0, 0))
    argv, env = ctr.cli_cmd("exec", "-t", "tty1", "sh", "-c", "stty size; exit 5")
    proc = subprocess.Popen(argv, env=env, stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        Output(master).until(b"12 34\r\n")
        assert proc.wait(15) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(master)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 42), (signal.SIGTERM, 43)])
def test_ctrl_c_and_sigterm_reach_the_container(ctr: Ctr, sig: int, code: int) -> None:
    # As pid 1 the shell only reacts to signals it traps; the loop lets the trap run.
    script = (
        "trap 'echo got-int; exit 42' INT; trap 'echo got-term; exit 43' TERM; "
        "echo ready; while :; do sleep 0.1; done"
    )
    argv, env = ctr.cli_cmd("run", "--rm", ctr.image, "sh", "-c", script)
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        out = Output(proc.stdout.fileno())
        out.until(b"ready\n")
        proc.send_signal(sig)
        out.until(b"got-")
        assert proc.wait(15) == code
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate()


def test_detached_container_through_ps_inspect_exec_logs_stop_rm(ctr: Ctr) -> None:
    script = "echo first; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo second; sleep 600"
    started = time.time_ns()
    res = ctr.cli("run", "-d", "--name", "web", "-e", "GREETING=hello", "-l", "tier=test",
                  ctr.image, "sh", "-c", script)  # fmt: skip
    assert res.returncode == 0, res.stderr
    cid = res.stdout.strip()
    assert len(cid) == 64

    table = ctr.cli("ps").stdout.splitlines()
    assert table[0].split()[:2] == ["CONTAINER", "ID"]
    assert table[1].startswith(cid[:12]) and table[1].split()[-1] == "web"
    assert "Up " in table[1]

    info = json.loads(ctr.cli("inspect", "web").stdout)
    assert info["id"] == cid and info["name"] == "web" and info["status"] == "running"
    assert info["image"] == ctr.image and info["image_id"].startswith("sha256:")
    assert info["labels"] == {"tier": "test"}
    assert info["args"] == ["sh", "-c", script]
    assert int(info["started_at"]) >= started and int(info["pid"]) > 0
    # Beside each raw nanosecond time, the same time in RFC 3339 (UTC, nanoseconds).
    ns = int(info["started_at"])
    when = datetime.datetime.fromtimestamp(ns // 10**9, datetime.UTC)
    assert info["started_at_rfc3339"] == f"{when:%Y-%m-%dT%H:%M:%S}.{ns % 10**9:09d}Z"
    assert "finished_at_rfc3339" not in info  # 0: not a time
    assert info["spec"]["hostname"] == cid[:12]
    assert "GREETING=hello" in info["spec"]["process"]["env"]
    # "<parent>/<id>" with cgroupfs, "<slice>:pyctr:<id>" with systemd.
    assert info["spec"]["linux"]["cgroupsPath"].endswith((":" if cgroups.SYSTEMD else "/") + cid)
    ns = {n["type"] for n in info["spec"]["linux"]["namespaces"]}
    assert ns == {"pid", "ipc", "uts", "mount", "network"}
    assert json.loads(ctr.cli("ps", "-o", "json").stdout)[0]["id"] == cid

    # exec: its own exit code; stdin reaches it; the container's env and hostname.
    res = ctr.cli("exec", "-i", cid[:8], "sh", "-c", "cat; echo $GREETING $(hostname); exit 4",
                  input="from stdin\n")  # fmt: skip
    assert res.returncode == 4, res.stderr
    assert res.stdout == f"from stdin\nhello {cid[:12]}\n"
    assert ctr.cli("exec", "web", "false").returncode == 1

    # logs -f: sees a line written after it started, ends when the container does.
    argv, env = ctr.cli_cmd("logs", "-f", "web")
    follower = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert follower.stdout is not None
        out = Output(follower.stdout.fileno())
        out.until(b"first\n")
        assert ctr.cli("exec", "web", "touch", "/tmp/go").returncode == 0
        out.until(b"second\n")
        assert follower.poll() is None  # still following

        stopped = ctr.cli("stop", "-t", "1", "web")
        assert stopped.returncode == 0, stopped.stderr
        assert follower.wait(15) == 0  # the container exited: logs -f is done
    finally:
        if follower.poll() is None:
            follower.kill()
        follower.communicate()
    assert ctr.cli("logs", "--tail", "1", "web").stdout == "second\n"
    stamped = ctr.cli("logs", "-t", "web").stdout.splitlines()
    assert stamped[0].endswith("Z first") and stamped[0][:4].isdigit()

    info = json.loads(ctr.cli("inspect", cid).stdout)
    assert info["status"] == "exited" and info["exit_code"] == 137  # sh ignores TERM as pid 1
    assert info["reason"] == "Error" and int(info["finished_at"]) > int(info["started_at"])
    assert ctr.cli("ps").stdout.splitlines()[1:] == []
    assert "Exited (137)" in ctr.cli("ps", "-a").stdout

    assert ctr.cli("exec", "web", "true").returncode == 125  # not running
    res = ctr.cli("rm", "web")
    assert res.returncode == 0 and res.stdout.strip() == "web"
    missing = ctr.cli("inspect", "web")
    assert missing.returncode == 3 and "not found" in missing.stderr


def test_kill_and_rm_force(ctr: Ctr) -> None:
    cid = ctr.cli("run", "-d", ctr.image, "sleep", "600").stdout.strip()
    assert ctr.cli("rm", cid).returncode == 1  # running: refused, nothing changes
    assert ctr.get(cid).status == "running"
    assert ctr.cli("kill", "-s", "nosuch", cid).returncode == 2
    assert ctr.cli("kill", cid[:10]).returncode == 0  # KILL by default
    assert ctr.wait(cid).exit_code == 128 + signal.SIGKILL
    other = ctr.cli("run", "-d", ctr.image, "sleep", "600").stdout.strip()
    assert ctr.cli("rm", "-f", other, cid).returncode == 0
    assert ctr.list() == []


def test_events_show_a_runs_lifecycle(ctr: Ctr) -> None:
    argv, env = ctr.cli_cmd("-v", "events", "--filter", "/containers/", "--filter", "/tasks/")
    events = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        assert events.stdout is not None and events.stderr is not None
        Output(events.stderr.fileno()).until(b"listening")
        res = ctr.cli("run", "--rm", "--name", "evt", ctr.image, "sh", "-c", "exit 5")
        assert res.returncode == 5
        out = Output(events.stdout.fileno())
        out.until(b"/containers/delete")
        lines = [line.split(" ", 3) for line in out.seen.decode().splitlines()]
        topics = [topic for _, topic, _, _ in lines]
        assert topics == ["/containers/create", "/tasks/start", "/tasks/exit", "/containers/delete"]
        subjects = {subject for _, _, subject, _ in lines}
        assert len(subjects) == 1 and len(subjects.pop()) == 64
        exit_data = json.loads(lines[2][3])
        assert exit_data["exit_code"] == 5 and exit_data["name"] == "evt"
    finally:
        events.terminate()
        events.communicate(timeout=15)


def test_early_output_is_not_lost(ctr: Ctr) -> None:
    # The process writes at once and exits: only an attach before start sees it.
    for _ in range(3):
        res = ctr.cli("run", "--rm", ctr.image, "sh", "-c", "seq 1 500; echo end >&2")
        assert res.returncode == 0, res.stderr
        assert res.stdout == "".join(f"{i}\n" for i in range(1, 501))
        assert res.stderr == "end\n"


def test_stdin_pipe_reaches_run_i(ctr: Ctr) -> None:
    data = "".join(f"line {i}\n" for i in range(2000))
    res = ctr.cli("run", "--rm", "-i", ctr.image, "sh", "-c", "cat; echo done", input=data)
    assert res.returncode == 0, res.stderr
    assert res.stdout == data + "done\n"
    wait_for(lambda: ctr.list() == [], what="auto-removal")
