"""OpenVINO backends created and dropped on different threads, and out of order, leave every
thread able to take a Python signal handler.

The CPU plugin swaps a signal stack onto the thread that builds it and unmaps it when it is
destroyed. With one Core per backend, a backend dropped on another thread (or two dropped out
of order) left the main thread a dangling signal stack, and the next SIGCHLD handler killed the
test session with a SIGSEGV. The scenario runs in a child process because that is how it fails.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from core.model.artifact import load_artifact
from inference.backends import LoadContext
from inference.backends.exported import openvino_file

CHILD = r"""
import faulthandler, os, signal, sys, threading
import torch
from inference.backends.exported import OpenVinoBackend

faulthandler.enable()  # as pytest does: the main thread gets a signal stack of its own
path, how = sys.argv[1:]

def backend():
    return OpenVinoBackend(path, torch.device("cpu"), threads=1)

if how == "out-of-order":
    first, second = backend(), backend()
    del first  # dropped in creation order, not the reverse
    del second
else:  # built here, dropped on another thread
    box = [backend()]
    dropper = threading.Thread(target=box.clear)
    dropper.start()
    dropper.join()

hits = []
signal.signal(signal.SIGUSR1, lambda *_: hits.append(1))
os.kill(os.getpid(), signal.SIGUSR1)
signal.signal(signal.SIGCHLD, lambda *_: hits.append(2))
rc = os.spawnv(os.P_WAIT, sys.executable, [sys.executable, "-c", "pass"])
print("handled", sorted(set(hits)), rc)
"""


@pytest.fixture(scope="module")
def openvino_xml(model_artifact_factory: Callable[..., Path],
                 tmp_path_factory: pytest.TempPathFactory) -> Path:
    artifact = model_artifact_factory("test-openvino-signals", seed=9)
    card = load_artifact(artifact)[1]
    ctx = LoadContext(artifact=artifact, card=card, device=torch.device("cpu"),
                      load_model=lambda: load_artifact(artifact)[0],
                      cache_dir=tmp_path_factory.mktemp("ov-cache"), max_batch_size=4, threads=1)
    return openvino_file(ctx)


@pytest.mark.parametrize("how", ["out-of-order", "other-thread"])
def test_signal_handlers_survive_dropped_backends(openvino_xml: Path, how: str) -> None:
    child = subprocess.run([sys.executable, "-c", CHILD, str(openvino_xml), how],
                           capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, (f"child exited {child.returncode} (-11 is a SIGSEGV):\n"
                                   f"{child.stdout}\n{child.stderr[-3000:]}")
    assert "handled [1, 2] 0" in child.stdout, child.stdout
