#!/usr/bin/env python3
"""Writes the TensorBoard event-file fixture the Swift reader is tested against, with TensorBoard's own writer
(PyTorch's torch.utils.tensorboard.SummaryWriter, which needs the `tensorboard` package).

    pip install tensorboard torch
    python3 scripts/make_tensorboard_fixture.py [Tests/ConvoyTrainTests/Fixtures/tensorboard]

Writes `events.out.tfevents.fixture` (scalars under three tags, including a negative step-0 value, a huge
and a tiny value) and `expected.json`: each event as TensorBoard's own reader (EventAccumulator) returns it.
"""
import glob
import json
import os
import shutil
import sys
import tempfile

from torch.utils.tensorboard import SummaryWriter
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "Tests/ConvoyTrainTests/Fixtures/tensorboard"
    os.makedirs(out, exist_ok=True)
    work = tempfile.mkdtemp()
    writer = SummaryWriter(log_dir=work)
    values = {
        "train/loss": [(0, 3.25), (1, 2.875), (2, 2.5), (5, 1.0 / 3.0), (300000, -0.125)],
        "train/learning_rate": [(0, 0.0), (1, 6e-4), (2, 1.5e-7)],
        "train/tokens_per_second": [(1, 123456.789), (2, 3.0e38)],
    }
    for tag, points in values.items():
        for step, value in points:
            writer.add_scalar(tag, value, global_step=step, walltime=1700000000.5 + step)
    writer.close()
    written = glob.glob(os.path.join(work, "events.out.tfevents.*"))
    assert len(written) == 1, written
    target = os.path.join(out, "events.out.tfevents.fixture")
    shutil.copyfile(written[0], target)

    # What TensorBoard's own reader makes of the file: the values the Swift reader must reproduce exactly.
    accumulator = EventAccumulator(out, size_guidance={"scalars": 0})
    accumulator.Reload()
    expected = {
        tag: [{"step": e.step, "wall_time": e.wall_time, "value": e.value} for e in accumulator.Scalars(tag)]
        for tag in accumulator.Tags()["scalars"]
    }
    with open(os.path.join(out, "expected.json"), "w") as f:
        json.dump(expected, f, indent=1, sort_keys=True)
    shutil.rmtree(work)
    print(f"wrote {target} ({os.path.getsize(target)} bytes) and expected.json: "
          + ", ".join(f"{tag} {len(points)}" for tag, points in expected.items()))


if __name__ == "__main__":
    main()
