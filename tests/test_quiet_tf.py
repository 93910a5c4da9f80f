"""TensorFlow's start-up chatter is dropped at the file-descriptor level; anything else it writes is passed on."""

import subprocess
import sys

CHILD = r"""
import os
from ensemble_group import quiet_tf
with quiet_tf._start_up_chatter_dropped():
    os.write(2, b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR\n")
    os.write(2, b"I0000 00:00:1796233041.011405    2820 port.cc:153] oneDNN custom operations are on.\n")
    os.write(2, b"E0000 00:00:1796233041.011405    2820 cuda.cc:1] a real error\n")
    os.write(2, b"Illegal instruction: the last words\n")
os.write(2, b"after\n")
"""


def test_only_start_up_chatter_is_dropped():
    run = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True)
    assert run.stderr == "E0000 00:00:1796233041.011405    2820 cuda.cc:1] a real error\nIllegal instruction: the last words\nafter\n"


def test_an_error_raised_during_the_import_still_reaches_the_user():
    child = ("from ensemble_group import quiet_tf\nimport os\n"
             "with quiet_tf._start_up_chatter_dropped():\n    os.write(2, b'the cause\\n'); raise ImportError('no tf')\n")
    run = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True)
    assert run.returncode == 1
    assert run.stderr.startswith("the cause\n") and "ImportError: no tf" in run.stderr
