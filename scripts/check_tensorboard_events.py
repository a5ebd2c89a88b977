#!/usr/bin/env python3
"""Reads the TensorBoard event files of a Convoy run with TensorBoard's own readers and checks them against the
run's metrics.jsonl: every scalar at its step, equal to the metrics value rounded to float32.

    pip install tensorboard
    python3 scripts/check_tensorboard_events.py RUN_DIR

Three readers: the record reader TensorBoard uses without TensorFlow (it checks the masked CRC-32C of every
length and every record, failing on a mismatch), event_file_loader (decodes each Event protobuf) and
EventAccumulator (what the TensorBoard UI shows). Exits non-zero on any difference.
"""
import glob
import json
import os
import sys

import numpy as np
from tensorboard.backend.event_processing import event_file_loader
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.compat.tensorflow_stub import errors
from tensorboard.compat.tensorflow_stub.pywrap_tensorflow import PyRecordReader_New

# The same table as MetricsLog.scalarTags in Sources/ConvoyTrain/Training/MetricsLog.swift.
TAGS = {
    "loss": "train/loss", "val_loss": "validation/loss", "lr": "train/learning_rate",
    "tokens_per_s": "train/tokens_per_second", "samples_per_s": "train/samples_per_second",
    "grad_norm": "train/grad_norm", "loss_scale": "train/loss_scale",
    "val_logloss": "validation/log_loss", "val_auc": "validation/auc", "accuracy": "validation/accuracy",
}


def fail(message):
    print("FAIL: " + message)
    sys.exit(1)


def main():
    if len(sys.argv) != 2:
        fail("usage: check_tensorboard_events.py RUN_DIR")
    run = sys.argv[1]
    files = sorted(glob.glob(os.path.join(run, "events.out.tfevents.*")))
    if not files:
        fail(f"no events.out.tfevents.* in {run}")

    records = 0
    for path in files:
        reader = PyRecordReader_New(path)
        while True:
            try:
                reader.GetNext()
            except errors.OutOfRangeError:
                break
            except errors.DataLossError as error:
                fail(f"{path}: {error}")
            records += 1
        events = list(event_file_loader.EventFileLoader(path).Load())
        if not events or events[0].file_version != "brain.Event:2":
            fail(f"{path}: the first event does not carry file_version brain.Event:2")

    accumulator = EventAccumulator(run, size_guidance={"scalars": 0})
    accumulator.Reload()
    scalars = {tag: {(e.step, e.value) for e in accumulator.Scalars(tag)} for tag in accumulator.Tags()["scalars"]}

    expected = {}
    with open(os.path.join(run, "metrics.jsonl")) as metrics:
        for line in metrics:
            record = json.loads(line)
            for key, tag in TAGS.items():
                value = record.get(key)
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    expected.setdefault(tag, set()).add((record["step"], float(np.float32(value))))
    if set(expected) != set(scalars):
        fail(f"tags differ: metrics.jsonl {sorted(expected)}, event files {sorted(scalars)}")
    for tag in sorted(expected):
        if expected[tag] != scalars[tag]:
            missing = sorted(expected[tag] - scalars[tag])[:3]
            extra = sorted(scalars[tag] - expected[tag])[:3]
            fail(f"{tag}: in metrics only {missing}, in events only {extra}")
    counts = ", ".join(f"{tag} {len(points)}" for tag, points in sorted(scalars.items()))
    print(f"OK: {len(files)} event file(s), {records} records with valid CRCs; TensorBoard reads the same "
          f"scalars as metrics.jsonl: {counts}")


if __name__ == "__main__":
    main()
