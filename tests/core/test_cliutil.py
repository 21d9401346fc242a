"""Command-line overrides are validated like settings: a clear message and exit 2."""

from __future__ import annotations

import pytest
import torch
from typer.testing import CliRunner

from binaudit.cli import app

# Each command's own override options, with a value the settings refuse.
BAD_BATCH = [["worker", "--max-batch-size", "0"], ["serve", "--max-batch-size", "0"],
             ["replay", "--topic", "t", "--model", "m", "--max-batch-size", "0"]]


@pytest.mark.parametrize("argv", BAD_BATCH, ids=lambda a: a[0])
def test_max_batch_size_zero_is_refused_with_exit_2(argv: list[str]) -> None:
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 2, result.output
    assert "--max-batch-size" in result.output and "greater than or equal to 1" in result.output


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
@pytest.mark.parametrize("command", [["worker"], ["serve"],
                                     ["replay", "--topic", "t", "--model", "m"]],
                         ids=lambda a: a[0])
def test_device_cuda_without_cuda_is_refused_with_exit_2(command: list[str]) -> None:
    result = CliRunner().invoke(app, [*command, "--device", "cuda"])
    assert result.exit_code == 2, result.output
    assert "--device cuda" in result.output and "no CUDA device" in result.output


def test_an_unknown_device_is_refused_with_exit_2() -> None:
    result = CliRunner().invoke(app, ["worker", "--device", "tpu"])
    assert result.exit_code == 2, result.output
    assert "--device" in result.output
