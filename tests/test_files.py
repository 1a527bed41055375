"""Atomic writes and the output-folder lock: what an interrupted run leaves, and two runs at once."""
import subprocess
import sys
import textwrap

import pytest

from vjepa_fast.files import FolderLock, atomic_write, remove_stale_temps
from vjepa_fast.jobs.loop import Run, Schedule

HOLD = textwrap.dedent("""
    import sys, time
    from vjepa_fast.files import FolderLock
    FolderLock(sys.argv[1]).acquire()
    print("locked", flush=True)
    time.sleep(60)
""")

WRITE_FOREVER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from vjepa_fast.files import atomic_write
    def slow(p):
        Path(p).write_bytes(b"x" * 1000)
        print("writing", flush=True)
        time.sleep(60)
    atomic_write(Path(sys.argv[1]) / "latest.pt", slow)
""")


def started(script, *args):
    proc = subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE, text=True)
    proc.stdout.readline()  # the child has done its part
    return proc


def test_a_second_run_on_a_folder_is_refused(tmp_path):
    holder = started(HOLD, str(tmp_path))
    try:
        with pytest.raises(ValueError, match=f"in use by another run \\(process {holder.pid} on"):
            FolderLock(tmp_path).acquire()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    holder = started(HOLD, str(tmp_path))
    holder.kill()  # kill -9: the lock file stays
    holder.wait()
    assert (tmp_path / ".lock").exists()
    FolderLock(tmp_path).acquire()
    assert f"taking over the lock of process {holder.pid}" in caplog.text


def test_a_write_killed_midway_leaves_the_old_file_and_its_temp_goes_at_the_next_start(tmp_path, caplog):
    atomic_write(tmp_path / "latest.pt", lambda p: open(p, "wb").write(b"good"))
    writer = started(WRITE_FOREVER, str(tmp_path))
    writer.kill()
    writer.wait()
    temps = [p for p in tmp_path.iterdir() if p.name.startswith(".latest.pt.")]
    assert len(temps) == 1 and (tmp_path / "latest.pt").read_bytes() == b"good"
    Run(tmp_path, "latest.pt", Schedule(10, 1e-3), optimizer=None)
    assert not temps[0].exists() and "left by an interrupted write" in caplog.text
    assert remove_stale_temps(tmp_path) == []
