"""covidnetx.utils: the machine a report names is measured; long loops see a stop signal only inside a run;
git is asked for the commit once per process."""
import os
import subprocess
import sys

import pytest

from covidnetx import utils as U


def test_the_machine_summary_counts_the_cores_this_process_may_use():
    cores = len(os.sched_getaffinity(0))
    assert U.machine_summary().startswith(f"{cores} CPU core{'s' if cores != 1 else ''}, ")
    if cores > 1:                            # a process bound to one core says so
        r = subprocess.run(["taskset", "-c", "0", sys.executable, "-c",
                            "from covidnetx.utils import machine_summary; print(machine_summary())"],
                           capture_output=True, text=True, cwd=os.path.dirname(os.path.dirname(__file__)))
        assert r.returncode == 0 and r.stdout.startswith("1 CPU core, "), r.stdout + r.stderr


def test_check_stop_raises_only_while_a_stop_check_says_so():
    U.check_stop()                                        # nothing installed: never stops
    flag = {"v": False}
    U.set_stop_check(lambda: flag["v"])
    try:
        U.check_stop()
        flag["v"] = True
        with pytest.raises(U.StopRequested):
            U.check_stop()
    finally:
        U.set_stop_check(lambda: False)


