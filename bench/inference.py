"""Our MC-dropout inference path vs the plain MONAI loop, in the same process, on the same network and input.

    python bench/inference.py [--T 20] [--size 240 240 155] [--roi 128 128 128] [--patients 4]
                              [--models SegResNet UNet-Res] [--cohort data/demo] [--weights weights]
                              [--precision auto] [--skip-synthetic] [--skip-cohort]

* **plain**: what a MONAI user writes: dropout layers in train mode, then T times
  ``sliding_window_inference(x, roi, sw_batch_size=1, predictor=net, overlap=0.25, mode="gaussian")`` in fp32,
  summing sigmoid(z) and its binary entropy (mean probability, entropy, MI); patients loaded one after the
  other in the same thread.
* **ours**: :func:`core.inference.uncertainty.predict` (``mc_dropout``) with the run plan the batch uses: precision
  from ``--precision`` (:mod:`core.inference.precision`; ``auto`` = fp32 on CPU) and passes per forward call from
  :func:`core.inference.forward.choose_chunk` (its trial is a once-per-run cost, reported apart); streaming mean,
  entropy, MI, EPKL and per-pass volumes on the device; the next patients loaded, validated and normalised
  by the prefetching loader (:class:`core.batch.prefetch.Prefetcher`) while the current one is inferred.

Two inputs: (A) one BraTS-sized synthetic case (4 x 240 x 240 x 155 by default, an ellipsoidal "brain" of
noise), SegResNet with the demo architecture and random weights (timing only), windows of ``--roi`` at 1
mm; (B) the first ``--patients`` test patients of the demo cohort with the shipped weights (56 x 64 x 56,
one window). Prints seconds per patient (inference; on CUDA synchronised), the ratio plain / ours, peak
memory (CUDA: ``torch.cuda.max_memory_allocated``; CPU: the process's peak resident set size above the
level before the variant, reset through ``/proc/self/clear_refs``) and GPU utilisation (mean of
``nvidia-smi`` samples every 100 ms, where present). The variants alternate (plain, ours, plain, ours) over
``--repeats`` rounds so that a change in machine load hits both.
"""
from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402


# ----------------------------------------------------------------------------------------- measuring
def _rss_kb(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1])
    return 0


class Meter:
    """Wall seconds, peak memory (MB) and mean GPU utilisation (%) of the code inside ``with Meter(dev) as m``."""

    def __init__(self, dev: torch.device):
        self.dev = dev
        self.util: list[float] = []
        self._stop = threading.Event()

    def __enter__(self):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
            torch.cuda.reset_peak_memory_stats(self.dev)
            self.base = torch.cuda.memory_allocated(self.dev)
            if shutil.which("nvidia-smi"):
                self._t = threading.Thread(target=self._sample, daemon=True)
                self._t.start()
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
            except OSError:
                pass
            self.base = _rss_kb("VmRSS") * 1024
        self.t0 = time.perf_counter()
        return self

    def _sample(self):
        idx = self.dev.index or 0
        while not self._stop.is_set():
            try:
                out = subprocess.run(["nvidia-smi", "-i", str(idx), "--query-gpu=utilization.gpu",
                                      "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=2)
                self.util.append(float(out.stdout.strip().splitlines()[0]))
            except Exception:
                return
            time.sleep(0.1)

    def __exit__(self, *exc):
        if self.dev.type == "cuda":
            torch.cuda.synchronize(self.dev)
        self.seconds = time.perf_counter() - self.t0
        self._stop.set()
        if self.dev.type == "cuda":
            self.peak_mb = (torch.cuda.max_memory_allocated(self.dev) - self.base) / 2**20
        else:
            self.peak_mb = (_rss_kb("VmHWM") * 1024 - self.base) / 2**20
        self.gpu_util = float(np.mean(self.util)) if self.util else None
        return False


# ------------------------------------------------------------------------------------------ variants
def plain_mc(model: torch.nn.Module, x: torch.Tensor, T: int, roi, seed: int = 0) -> tuple[np.ndarray, ...]:
    """The plain MONAI loop: T fp32 sliding-window passes with dropout on, one sample per call.
    ``x``: (1, C, X, Y, Z) normalised; returns mean probability, entropy and MI, each (R, X, Y, Z) float32."""
    from monai.inferers import sliding_window_inference

    from core.inference.forward import binary_entropy, set_mc_dropout

    torch.manual_seed(seed)
    set_mc_dropout(model)
    psum = hsum = None
    with torch.inference_mode():
        for _ in range(T):
            p = torch.sigmoid(sliding_window_inference(x, roi, sw_batch_size=1, predictor=model, overlap=0.25,
                                                       mode="gaussian")[0])
            h = binary_entropy(p)
            psum = p if psum is None else psum + p
            hsum = h if hsum is None else hsum + h
    model.eval()
    p = psum / T
    ent = binary_entropy(p)
    return p.cpu().numpy(), ent.cpu().numpy(), (ent - hsum / T).clamp_(min=0).cpu().numpy()


def _row(name, what, n, m_plain, m_ours, extra=""):
    sp, so = m_plain.seconds / n, m_ours.seconds / n
    util = lambda m: "n/a" if m.gpu_util is None else f"{m.gpu_util:.0f} %"  # noqa: E731
    print(f"| {name} | {what} | {sp:.2f} | {so:.2f} | **{sp / so:.2f}x** | {m_plain.peak_mb:.0f} | {m_ours.peak_mb:.0f} "
          f"| {util(m_plain)} / {util(m_ours)} |{extra}", flush=True)
    return sp, so


def synthetic_case(size, seed: int = 0) -> np.ndarray:
    """(4, X, Y, Z) float32: an ellipsoid of smooth positive noise (a "brain") in zeros."""
    rng = np.random.default_rng(seed)
    grid = np.meshgrid(*[np.linspace(-1, 1, s, dtype=np.float32) for s in size], indexing="ij")
    brain = sum(g ** 2 / r ** 2 for g, r in zip(grid, (0.85, 0.9, 0.8))) <= 1
    img = (100 + 20 * rng.standard_normal((4, *size))).astype(np.float32)
    return img * brain


def bench_synthetic(args, dev) -> None:
    from core.inference.modelset import ModelSet
    from core.io.architectures import DEMO_MODELS, build_model, make_card, preprocess
    from core.io.checkpoints import LoadedModel
    from core.inference.precision_check import choose_precision
    from core.inference.forward import choose_chunk
    from core.inference.uncertainty import predict

    spec = DEMO_MODELS["SegResNet"]
    card = make_card("SegResNet", spec["arch"], spec["arch_args"], spacing_mm=(1, 1, 1), roi_size=args.roi)
    torch.manual_seed(0)
    ms = ModelSet(LoadedModel(build_model(card).to(dev).eval(), card, "random-init"))
    image = synthetic_case(args.size)
    x = preprocess(image, card).to(dev)
    t = time.perf_counter()
    choice = choose_precision(ms, image, None, args.precision, dev)
    ms.precision = choice.chosen
    trial = choose_chunk(ms, image, args.T, device=dev)
    setup = time.perf_counter() - t
    print(f"\n(A) synthetic case {image.shape}, SegResNet (demo architecture, random init), roi {tuple(args.roi)}, "
          f"T = {args.T}, device {dev}: precision {choice.chosen} ({choice.reason}); {trial['chunk']} pass(es) per "
          f"call (trial: {trial['s_per_pass_1']:.2f} s/pass alone, {trial['s_per_pass_k']:.2f} s/pass in "
          f"{trial['k']}); once-per-run setup {setup:.1f} s")
    print("| input | model | plain s/patient | ours s/patient | plain / ours | plain peak MB | ours peak MB | GPU util |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for _ in range(args.repeats):
        with Meter(dev) as mp:
            plain_mc(ms.model, x, args.T, tuple(args.roi))
        with Meter(dev) as mo:
            predict(ms, image, "mc_dropout", T=args.T, mc_batch=trial["chunk"], cache={("x", id(image)): x})
        _row("synthetic " + "x".join(map(str, args.size)), "SegResNet", 1, mp, mo)


def bench_cohort(args, dev) -> None:
    from core.io.cohort import discover, load_case
    from core.inference.modelset import demo_model_spec, load_model_set
    from core.io.architectures import preprocess
    from core.inference.precision_check import choose_precision
    from core.batch.prefetch import Prefetcher
    from core.inference.forward import choose_chunk
    from core.inference.uncertainty import predict

    files = discover(args.cohort, "test")[: args.patients]
    print(f"\n(B) demo cohort {args.cohort}: {len(files)} test patients, shipped weights, T = {args.T}, device {dev}")
    print("| input | model | plain s/patient | ours s/patient | plain / ours | plain peak MB | ours peak MB | GPU util |"
          " WT Dice ours vs plain |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in args.models:
        ms = load_model_set(demo_model_spec(name, args.weights), dev)
        first = load_case(files[0], ms.card["channels"])
        choice = choose_precision(ms, first.image, None, args.precision, dev)
        ms.precision = choice.chosen
        chunk = choose_chunk(ms, first.image, args.T, device=dev)["chunk"]
        roi = tuple(ms.card["roi_size"])

        def load(f):
            case = load_case(f, ms.card["channels"])
            x = preprocess(case.image, ms.card)
            return case, (x.pin_memory() if dev.type == "cuda" else x)

        for _ in range(args.repeats):
            plain_out, ours_out = [], []
            with Meter(dev) as mp:
                for f in files:
                    case = load_case(f, ms.card["channels"])
                    plain_out.append(plain_mc(ms.model, preprocess(case.image, ms.card).to(dev), args.T, roi)[0])
            with Meter(dev) as mo:
                for f, got in Prefetcher(files, load, depth=2):
                    case, x = got
                    cache = {("x", id(case.image)): x.to(dev, non_blocking=True)}
                    ours_out.append(predict(ms, case.image, "mc_dropout", T=args.T, mc_batch=chunk, cache=cache).prob)
            wt = [2 * ((a[0] >= .5) & (b[0] >= .5)).sum() / max(1, (a[0] >= .5).sum() + (b[0] >= .5).sum())
                  for a, b in zip(ours_out, plain_out)]
            _row("demo 56x64x56", f"{name} ({choice.chosen}, {chunk}/call)", len(files), mp, mo,
                 f" {np.mean(wt):.3f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--T", type=int, default=20)
    ap.add_argument("--size", type=int, nargs=3, default=[240, 240, 155])
    ap.add_argument("--roi", type=int, nargs=3, default=[128, 128, 128])
    ap.add_argument("--patients", type=int, default=4)
    ap.add_argument("--models", nargs="+", default=["SegResNet", "UNet-Res"])
    ap.add_argument("--cohort", default=str(ROOT / "data" / "demo"))
    ap.add_argument("--weights", default=str(ROOT / "weights"))
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"])
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--skip-cohort", action="store_true")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from core.inference.forward import default_device

    dev = torch.device(args.device) if args.device else default_device()
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        print(f"device {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    else:
        import os
        import platform

        print(f"device CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch threads {torch.get_num_threads()}), torch {torch.__version__}; no GPU: GPU figures not measured")
    if not args.skip_synthetic:
        bench_synthetic(args, dev)
    if not args.skip_cohort:
        bench_cohort(args, dev)
    return 0


if __name__ == "__main__":
    sys.exit(main())
