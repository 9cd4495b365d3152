"""Quantising a saved model to int8 in a process of its own:
``python -m stanceclf.infer.int8_build REQUEST.json``.

:func:`stanceclf.infer.int8.int8_encoder` starts it for a model read from a directory, so that NNCF's
peak memory (5.7 GB for the MPNet default) stays out of the caller's process, which never reads the torch
weights either. The request names the model directory, the calibration units (text and context), the
folder to write the graph into and the threads (None: torch's default). A refusal (a
:class:`~stanceclf.errors.StanceclfError`) is written into that folder as ``refusal.json`` (its class, message
and place), for the caller to raise as its own, and the exit status is 2.
"""

from __future__ import annotations

import json
import signal
import sys
from pathlib import Path

from stanceclf.errors import StanceclfError
from stanceclf.infer.int8 import REFUSAL_NAME, quantize_into
from stanceclf.infer.model import StanceModel, Unit

#: The exit status of a refusal (anything else non-zero is a crash).
REFUSED = 2


def _die_with_parent() -> None:
    """On Linux, end this child when the process that started it dies: a killed caller leaves no quantisation
    running on for minutes with gigabytes."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def main(argv: list[str]) -> int:
    """Quantise as the request in ``argv[0]`` asks; the exit status."""
    _die_with_parent()
    request = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
    out = Path(request["out"])
    if request.get("threads"):
        import torch

        torch.set_num_threads(int(request["threads"]))
    try:
        model = StanceModel.from_pretrained(request["model"])
        units = [Unit(index, 0, len(text), text, context) for index, (text, context) in enumerate(request["units"])]
        quantize_into(model, units, out, request.get("threads"))
    except StanceclfError as error:
        refusal = {"kind": type(error).__name__, "error": error.detail, "where": error.where}
        (out / REFUSAL_NAME).write_text(json.dumps(refusal), encoding="utf-8")
        return REFUSED
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
