"""Inference seconds per patient for every uncertainty method, per demo model, on this machine.

    python bench/methods.py [--patients 5] [--T 10] [--weights weights] [--cohort data/demo]

Each (model, method) runs on the same first N test patients of the demo cohort with a fresh per-patient
cache (so a method pays for all of its passes), after one warm-up patient. Prints a table of mean seconds
per patient and the number of network passes, and the ratio to the deterministic pass of the same model
(the reference run in the same process). CUDA is used when available.

On CPU it then times each model's deterministic and mc_dropout passes again with PyTorch's own ``Conv3d``
kernels (``--no-native`` skips this) and prints the ratio native / oneDNN (``core.models.prefer_onednn``,
which every loaded model uses).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None) -> int:
    import numpy as np
    import torch

    from core.io.cohort import discover, load_case
    from core.inference.modelset import demo_model_spec, load_model_set
    from core.io.architectures import DEMO_MODELS, _OneDNNConv3d, prefer_onednn
    from core.inference.methods import DEMO_METHODS
    from core.inference.forward import default_device
    from core.inference.uncertainty import predict, unavailable_reason

    ap = argparse.ArgumentParser()
    ap.add_argument("--patients", type=int, default=5)
    ap.add_argument("--T", type=int, default=10)
    ap.add_argument("--weights", default=str(ROOT / "weights"))
    ap.add_argument("--cohort", default=str(ROOT / "data" / "demo"))
    ap.add_argument("--methods", nargs="+", default=list(DEMO_METHODS) + ["mc_dropout+tta"])
    ap.add_argument("--no-native", action="store_true", help="skip the native-Conv3d reference (CPU)")
    args = ap.parse_args(argv)
    dev = default_device()
    cases = [load_case(f) for f in discover(args.cohort, "test")[: args.patients + 1]]
    print(f"device {dev}, torch threads {torch.get_num_threads()}, {args.patients} patients "
          f"{cases[0].image.shape[1:]}, T={args.T}")
    print(f"{'model':14s} {'method':28s} {'passes':>6s} {'s/patient':>10s} {'x deterministic':>16s}")

    def timed(ms, method):
        predict(ms, cases[0].image, method, T=args.T)  # warm-up (and auto chunk size)
        times, n = [], 0
        for c in cases[1:]:
            t = time.perf_counter()
            p = predict(ms, c.image, method, T=args.T, cache={})
            if dev.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t)
            n = p.n_samples
        return float(np.mean(times)), n

    native_rows = []
    for name in DEMO_MODELS:
        if not (Path(args.weights) / demo_model_spec(name, args.weights)["checkpoint"]).exists():
            continue
        ms = load_model_set(demo_model_spec(name, args.weights), dev)
        ms.temperature = np.ones(3, np.float32)  # timing only: a temperature of 1 costs what a fitted one does
        ref = None
        for method in args.methods:
            if unavailable_reason(method, ms):
                continue
            s, n = timed(ms, method)
            ref = ref or s
            print(f"{name:14s} {method:28s} {n:6d} {s:10.3f} {s / ref:16.2f}")
            if method in ("deterministic", "mc_dropout") and dev.type == "cpu" and not args.no_native:
                native_rows.append((ms, name, method, s))
    if native_rows:
        print(f"\nsame passes on PyTorch's native Conv3d kernels (reference) vs oneDNN (core.models.prefer_onednn):")
        print(f"{'model':14s} {'method':28s} {'native s':>10s} {'oneDNN s':>10s} {'native/oneDNN':>14s}")
        for ms, name, method, s in native_rows:
            for m in ms.primary.model.modules():  # back to nn.Conv3d's own forward (same weights)
                if type(m) is _OneDNNConv3d:
                    m.__class__ = torch.nn.Conv3d
            s_native, _ = timed(ms, method)
            prefer_onednn(ms.primary.model)
            print(f"{name:14s} {method:28s} {s_native:10.3f} {s:10.3f} {s_native / s:14.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
