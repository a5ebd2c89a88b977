#!/usr/bin/env python3
"""PyTorch reference values for Convoy's optimizers and gradient clipping.

This script is a *developer* tool: it is not needed to build or test Convoy,
and it is not run by CI. It needs Python 3 with ``torch`` (the CPU wheel is
enough), e.g. the venv described in ``scripts/hf_compat.py``::

    /tmp/hfenv/bin/python scripts/optimizer_reference.py \
        [Tests/ConvoyNNTests/Fixtures/optimizer-reference.json]

It is fully deterministic (no random numbers): a fixed small problem with two
float32 parameters,

    p1: shape [3, 4], p1.flat[i] = sin(0.7 * i + 0.3)
    p2: shape [5],    p2[j]      = 0.5 * cos(1.3 * j) - 0.2

and five fixed gradients (a different one per step s = 0..4),

    g1.flat[i] = cos(0.37 * i + 1.1 * s) * (1 + 0.25 * s)
    g2[j]      = sin(0.9 * j - 0.6 * s) * (0.5 + 0.3 * s) + 0.05 * s

is optimised for 5 steps by each torch.optim case below, setting ``p.grad``
directly before every ``step()``:

    sgd                  SGD(lr=0.1)
    sgd_momentum         SGD(lr=0.1, momentum=0.9)
    sgd_nesterov_decay   SGD(lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01)
    sgd_dampening        SGD(lr=0.1, momentum=0.9, dampening=0.1)
    adam_l2              Adam(lr=0.01, weight_decay=0.1)
    adamw                AdamW(lr=0.01, betas=(0.8, 0.99), eps=1e-6, weight_decay=0.1)

``torch.nn.utils.clip_grad_norm_`` (L2, over both parameters) is also run on
the step-0 gradients with a limit that clips (0.5) and one that does not (100).

Output JSON (all numbers are float32 values written as exact decimals)::

    {"torch_version": str,
     "shapes":    {"p1": [3, 4], "p2": [5]},
     "initial":   {"p1": [12 floats], "p2": [5 floats]},
     "gradients": [{"p1": [...], "p2": [...]} x 5],
     "cases": [{"name": str, "optimizer": "sgd" | "adam" | "adamw",
                "lr", "momentum", "dampening", "nesterov", "weight_decay",
                "beta1", "beta2", "eps",
                "steps": [{"p1": [...], "p2": [...]} x 5]}],   # after each step
     "clipping": [{"max_norm": float, "total_norm": float,
                   "gradients": {"p1": [...], "p2": [...]}}]}  # after clipping

The learning-rate schedules have no PyTorch counterpart and are tested in
Swift directly against their documented formulas.
"""

import json
import math
import os
import sys

import torch

STEPS = 5
SHAPES = {"p1": [3, 4], "p2": [5]}
DEFAULT_OUTPUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "Tests", "ConvoyNNTests",
                              "Fixtures", "optimizer-reference.json")


def initial_values():
    p1 = [math.sin(0.7 * i + 0.3) for i in range(12)]
    p2 = [0.5 * math.cos(1.3 * j) - 0.2 for j in range(5)]
    return {"p1": torch.tensor(p1, dtype=torch.float32).reshape(3, 4),
            "p2": torch.tensor(p2, dtype=torch.float32)}


def gradient(step):
    g1 = [math.cos(0.37 * i + 1.1 * step) * (1 + 0.25 * step) for i in range(12)]
    g2 = [math.sin(0.9 * j - 0.6 * step) * (0.5 + 0.3 * step) + 0.05 * step for j in range(5)]
    return {"p1": torch.tensor(g1, dtype=torch.float32).reshape(3, 4),
            "p2": torch.tensor(g2, dtype=torch.float32)}


def flat(tensors):
    """{"p1": tensor, "p2": tensor} -> {"p1": [floats], "p2": [floats]} (exact float32 values)."""
    return {name: [float(x) for x in t.detach().reshape(-1).tolist()] for name, t in tensors.items()}


CASES = [
    dict(name="sgd", optimizer="sgd", lr=0.1),
    dict(name="sgd_momentum", optimizer="sgd", lr=0.1, momentum=0.9),
    dict(name="sgd_nesterov_decay", optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01),
    dict(name="sgd_dampening", optimizer="sgd", lr=0.1, momentum=0.9, dampening=0.1),
    dict(name="adam_l2", optimizer="adam", lr=0.01, weight_decay=0.1),
    dict(name="adamw", optimizer="adamw", lr=0.01, weight_decay=0.1, beta1=0.8, beta2=0.99, eps=1e-6),
]


def complete(case):
    """Fills in PyTorch's defaults so the fixture names every hyper-parameter."""
    full = dict(momentum=0.0, dampening=0.0, nesterov=False, weight_decay=0.0, beta1=0.9, beta2=0.999, eps=1e-8)
    full.update(case)
    return full


def make_optimizer(case, params):
    if case["optimizer"] == "sgd":
        return torch.optim.SGD(params, lr=case["lr"], momentum=case["momentum"], dampening=case["dampening"],
                               nesterov=case["nesterov"], weight_decay=case["weight_decay"])
    cls = torch.optim.Adam if case["optimizer"] == "adam" else torch.optim.AdamW
    return cls(params, lr=case["lr"], betas=(case["beta1"], case["beta2"]), eps=case["eps"],
               weight_decay=case["weight_decay"])


def run_case(case):
    params = {name: t.clone().requires_grad_(True) for name, t in initial_values().items()}
    optimizer = make_optimizer(case, list(params.values()))
    steps = []
    for step in range(STEPS):
        grads = gradient(step)
        for name, p in params.items():
            p.grad = grads[name].clone()
        optimizer.step()
        steps.append(flat(params))
    return dict(case, steps=steps)


def clipping(max_norm):
    params = {name: t.clone().requires_grad_(True) for name, t in initial_values().items()}
    for name, g in gradient(0).items():
        params[name].grad = g.clone()
    total = torch.nn.utils.clip_grad_norm_(list(params.values()), max_norm=max_norm, norm_type=2.0)
    return {"max_norm": max_norm, "total_norm": float(total),
            "gradients": flat({name: p.grad for name, p in params.items()})}


def main():
    torch.set_default_dtype(torch.float32)
    output = sys.argv[1] if len(sys.argv) > 1 else DEFAULT_OUTPUT
    reference = {
        "torch_version": torch.__version__,
        "shapes": SHAPES,
        "initial": flat(initial_values()),
        "gradients": [flat(gradient(step)) for step in range(STEPS)],
        "cases": [run_case(complete(case)) for case in CASES],
        "clipping": [clipping(0.5), clipping(100.0)],
    }
    os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
    with open(output, "w") as f:
        json.dump(reference, f, indent=1)
        f.write("\n")
    print(f"wrote {os.path.normpath(output)}")


if __name__ == "__main__":
    main()
