"""The cached process id is the caller's, also in a child made by fork."""

from __future__ import annotations

import os

from storscp import depotfiles, processid


def test_the_cached_pid_is_this_process() -> None:
    assert processid.current() == os.getpid()


def test_a_forked_child_has_its_own_pid_and_names_its_parts_with_it() -> None:
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # the child: say what it sees, then leave without cleanup
        os.close(read_end)
        os.write(write_end, f"{processid.current()} {depotfiles.unique_name()}".encode())
        os._exit(0)
    os.close(write_end)
    try:
        said = os.read(read_end, 200).decode().split()
    finally:
        os.close(read_end)
        os.waitpid(child, 0)
    pid, name = int(said[0]), said[1]
    assert pid == child != os.getpid()
    assert name.split("-")[1] == str(child)
