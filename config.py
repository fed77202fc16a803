"""pyinfra's project config: pyinfra execs this file from the working directory before it
reads the inventory, on every run (even one that targets no host, where deploy.py never runs).

It guards the run (operations.guard): a mistyped inventory path, ``--data`` without
``=``, an error in the inventory or group_data, and a run that targets no host each stop it
with one line naming the file and the problem, instead of a traceback or a silent exit 0.
An interrupted run (Ctrl-C, SIGTERM) exits 130 or 143, not 0 (operations.run).
"""

from operations.guard import install
from operations.kit.lock import remember_run
from operations.run import exit_non_zero_on_signals

install()
remember_run()  # the command line the deploy lock's owner line names, and --dry
exit_non_zero_on_signals()
