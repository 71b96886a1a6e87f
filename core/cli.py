"""Command line: ``python -m core {demo,run,merge,derive,compare,train}`` (see docs/cli.md for every option)."""
from __future__ import annotations

import argparse
import json
import sys
import time
import tomllib
from pathlib import Path

from core import store
from core.batch.executors import run_sharded
from core.batch.merge import merge_databases
from core.batch.pipeline import run_batch
from core.inference.methods import DEMO_METHODS
from core.inference.modelset import demo_model_spec, load_model_set
from core.io.architectures import DEMO_MODELS, demo_weight_files
from core.store.review import STATUSES as REVIEW_STATUSES
from core.io.label_sets import LABEL_SETS
from core.metrics.overlap import NSD_TOLERANCE_MM
from core.io.demo_cohort import DemoSpec, build_demo_cohort
from core.store.derived import build, build_all
from core.training.auxiliary import train_auxiliary
from core.training.segmentation import train_model

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "data"
DEMO_COHORT = DATA / "demo"
DEMO_DB = DATA / "results.duckdb"
SHIPPED_WEIGHTS = ROOT / "weights"


def demo_checkpoint_name(model: str) -> str:
    """The file name of a demo model's primary checkpoint (:func:`core.io.architectures.demo_weight_files`)."""
    return demo_weight_files(model)["checkpoint"]


def demo_weights(weights_dir: Path, cohort: Path, retrain: bool = False, use_demo_methods: bool = True,
                 log=print) -> list[dict]:
    """Model specs of the demo models: shipped weights (``weights/``) unless ``retrain``, else trained.

    Without shipped weights (or with ``retrain``) each model is trained into ``weights_dir``: primary with
    snapshots, ensemble members, auxiliary error network; parts already there are reused unless ``retrain``.

    Args:
        weights_dir: where trained weights go.
        cohort: the demo cohort (BraTS layout) to train on.
        retrain: train even when shipped or earlier weights exist.
        use_demo_methods: give each spec its model's own demo methods.
        log: where messages go.

    Returns:
        one model spec per demo model (:func:`core.inference.modelset.demo_model_spec`).
    """

    specs = []
    for name, spec in DEMO_MODELS.items():
        files = demo_weight_files(name)
        shipped = SHIPPED_WEIGHTS / files["checkpoint"]
        if shipped.exists() and not retrain:
            log(f"using shipped weights of {name} from {SHIPPED_WEIGHTS.relative_to(ROOT)}/ (retrain with --retrain)")
            specs.append(demo_model_spec(name, SHIPPED_WEIGHTS, with_demo_methods=use_demo_methods))
            continue
        out = weights_dir / files["checkpoint"]
        if retrain or not out.exists():
            train_model(name, spec["arch"], spec["arch_args"], cohort, out, snapshot_epochs=spec.get("snapshots", ()),
                        **spec["train"])
        for member, f in zip(spec.get("ensemble", []), files["ensemble"]):
            if retrain or not (weights_dir / f).exists():
                train_model(name, spec["arch"], spec["arch_args"], cohort, weights_dir / f, **{**spec["train"], **member})
        if files["auxiliary"] and (retrain or not (weights_dir / files["auxiliary"]).exists()):
            train_auxiliary(load_model_set(str(out)), cohort, weights_dir / files["auxiliary"])
        specs.append(demo_model_spec(name, weights_dir, with_demo_methods=use_demo_methods))
    return specs


def cmd_demo(args) -> int:
    """``python -m core demo``: build the demo cohort, load or train the demo models, run the batch on its test
    split; prints the seconds per stage. Returns the exit status: 0, or 1 when an evaluation failed."""
    stages = {}
    t = time.time()
    build_demo_cohort(DEMO_COHORT, DemoSpec(seed=args.seed))
    stages["cohort"] = time.time() - t
    t = time.time()
    # --methods given: every model runs those; else each model its demo methods (core/models.DEMO_MODELS)
    specs = demo_weights(DATA / "weights", DEMO_COHORT, args.retrain, use_demo_methods=args.methods is None)
    stages["models"] = time.time() - t
    t = time.time()
    T = args.T or 10
    summary = run_batch(DEMO_COHORT, args.db, specs, methods=args.methods or list(DEMO_METHODS), T=T, split="test",
                        patient_meta=_demo_meta())
    stages["batch"] = time.time() - t
    print("stage seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in stages.items()) + f", total {sum(stages.values()):.1f}")
    return 0 if summary["failed"] == 0 else 1


def _demo_meta() -> dict:
    man = DEMO_COHORT / "demo_manifest.json"
    if not man.exists():
        return {}
    return {p["patient_id"]: {"kind": p["kind"], "wt_ml": p["wt_ml"], "et_ml": p["et_ml"]}
            for p in json.loads(man.read_text())["patients"]}


def _mc_batch(v):
    return "auto" if v in (None, "auto") else int(v)


def cmd_run(args) -> int:
    """``python -m core run``: the batch on a cohort (options over the ``--config`` TOML's keys), in this process,
    as one ``--shard``, or over ``--workers`` / ``--executor ray`` shards merged into ``--db``.

    Returns the exit status: 0; 1 when an evaluation failed; 2 for missing ``--cohort`` / ``--models`` or
    ``--shard`` with ``--workers`` / ``--executor ray``.
    """
    cfg = {}
    if args.config:
        cfg = tomllib.loads(Path(args.config).read_text())
    cohort = args.cohort or cfg.get("cohort")
    db = args.db or cfg.get("db") or str(DEMO_DB)
    models = args.models or cfg.get("models")
    if not cohort or not models:
        print("error: --cohort and --models (or a --config naming them) are required", file=sys.stderr)
        return 2
    workers = args.workers or cfg.get("workers")
    executor = args.executor or cfg.get("executor", "local")
    shard = args.shard or cfg.get("shard")
    if shard and (executor == "ray" or (workers or 1) > 1):
        print("error: --shard runs one shard in this process; it does not go with --workers / --executor ray",
              file=sys.stderr)
        return 2
    kw = dict(methods=args.methods or cfg.get("methods", ["deterministic", "mc_dropout"]),
              T=args.T or cfg.get("T", 10), split=args.split or cfg.get("split"),
              device=args.device or cfg.get("device"), maps_dir=args.maps_dir or cfg.get("maps_dir"),
              save_maps=not args.no_maps, calibration_split=cfg.get("calibration_split", "calibration"),
              ts_fit_mask=cfg.get("ts_fit_mask", "brain"), precision=args.precision or cfg.get("precision", "auto"),
              mc_batch=_mc_batch(args.mc_batch or cfg.get("mc_batch")),
              prefetch=args.prefetch if args.prefetch is not None else cfg.get("prefetch", 2),
              label_set=args.label_set or cfg.get("label_set"),
              nsd_tolerance_mm=float(args.nsd_tolerance_mm or cfg.get("nsd_tolerance_mm", NSD_TOLERANCE_MM)))
    if executor == "ray" or (workers or 1) > 1:
        summary = run_sharded(cohort, db, models, workers=workers, executor=executor,
                              ray_address=args.ray_address or cfg.get("ray_address"), keep_shards=args.keep_shards,
                              **kw)
    else:
        summary = run_batch(cohort, db, models, shard=shard, **kw)
        if shard:
            print(f"shard {shard} done: merge the shards with `python -m core merge --db OUT {db} ...`")
    return 0 if summary["failed"] == 0 else 1


def cmd_merge(args) -> int:
    """``python -m core merge``: merge shard databases into ``--db``; exit status 1 when there were conflicts."""
    out = merge_databases(args.db, args.shards, quality=not args.no_quality)
    return 0 if not out["conflicts"] else 1


def cmd_derive(args) -> int:
    """``python -m core derive``: (re)build the derived tables of ``--run`` (default: every run); exit status 0."""
    with store.writer(args.db) as con:
        if args.run:
            out = build(con, args.run)
            print(f"derived tables of {args.run}: {out['rows']} in {out['seconds']} s")
        else:
            build_all(con, echo=print)
    return 0


def cmd_compare(args) -> int:
    """``python -m core compare A B``: row-for-row comparison of two results databases
    (:func:`core.store.compare.compare_databases`), one line per table; exit status 1 when they differ."""
    diffs = store.compare_databases(args.a, args.b, rel_tol=args.rel_tol)
    for d in diffs:
        state = "same" if d.same else "DIFFERENT"
        print(f"{d.table:28s} {state:9s} rows {d.rows_a} / {d.rows_b}  max relative float difference {d.max_rel_diff:.3g}")
        for x, y in d.examples[:2]:
            print(f"    a: {str(x)[:200]}\n    b: {str(y)[:200]}")
    return 0 if all(d.same for d in diffs) else 1


def cmd_report(args) -> int:
    """Write the study report of one run: one self-contained HTML file (core/report.py)."""
    from core import report

    db = Path(args.db)
    if not db.is_file():
        print(f"no database at {db}", file=sys.stderr)
        return 2
    try:
        out = report.write_report(db, args.out, run_id=args.run, method=args.method, mask=args.mask)
    except ValueError as e:
        print(f"report: {e}", file=sys.stderr)
        return 2
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB)")
    return 0


def cmd_export_reviews(args) -> int:
    """``python -m core export-reviews``: the label maps of the patients with the given review statuses as a
    folder a segmentation editor opens (core/io/review_export.py), optionally zipped; exit status 2 on bad input."""
    from core.io.review_export import export_reviews, zip_bytes

    db = Path(args.db)
    if not db.is_file():
        print(f"no database at {db}", file=sys.stderr)
        return 2
    try:
        table = export_reviews(db, args.run, args.model, args.out, method=args.method, statuses=args.status)
    except ValueError as e:
        print(f"export-reviews: {e}", file=sys.stderr)
        return 2
    print(f"exported {len(table)} patients of {args.model} ({', '.join(args.status)}) to {args.out}")
    if args.zip:
        Path(args.zip).write_bytes(zip_bytes(args.out))
        print(f"wrote {args.zip}")
    return 0


def cmd_train(args) -> int:
    """``python -m core train``: train a demo architecture (its hyperparameters, overridden by ``--epochs``,
    ``--lr``, ``--seed``) and write the checkpoint to ``--out``; exit status 0."""
    spec = DEMO_MODELS[args.model]
    hp = dict(spec["train"])
    for k in ("epochs", "lr", "seed"):
        if getattr(args, k) is not None:
            hp[k] = getattr(args, k)
    train_model(args.model, spec["arch"], spec["arch_args"], args.cohort, args.out, **hp)
    return 0


def main(argv=None) -> int:
    """The command line: parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand.

    Args:
        argv: the arguments after ``python -m core``.

    Returns:
        the subcommand's exit status (argparse exits with 2 on a usage error).
    """
    p = argparse.ArgumentParser(prog="python -m core", description="Tumour segmentation uncertainty & calibration batch")
    sub = p.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("demo", help="build the demo cohort, load or train the demo models, run the batch")
    d.add_argument("--db", default=str(DEMO_DB))
    d.add_argument("--T", type=int, default=None,
                   help="MC dropout samples (default 10)")
    d.add_argument("--methods", nargs="+", default=None,
                   help=f"methods for every model (default: each model's demo methods, all of {', '.join(DEMO_METHODS)} "
                        "for UNet-Res); see core/inference/uncertainty.py for the grammar")
    d.add_argument("--retrain", action="store_true", help="train the demo models instead of using shipped weights")
    d.add_argument("--seed", type=int, default=2026, help="demo cohort seed")
    d.set_defaults(fn=cmd_demo)
    r = sub.add_parser("run", help="run the batch on a BraTS-layout cohort")
    r.add_argument("--cohort")
    r.add_argument("--db")
    r.add_argument("--config", help="TOML file with the same keys (cohort, db, models, methods, T, split, device)")
    r.add_argument("--models", nargs="+", help="checkpoints: our .pt files, MONAI bundle folders, or plain state dicts with a .json/.toml sidecar")
    r.add_argument("--methods", nargs="+")
    r.add_argument("--T", type=int)
    r.add_argument("--split", help="only the patients of this split in splits.json (train/calibration/test)")
    r.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    r.add_argument("--maps-dir")
    r.add_argument("--no-maps", action="store_true")
    r.add_argument("--label-set", choices=sorted(LABEL_SETS),
                   help="label set of every patient's segmentation (default: by the file naming and the patient id's "
                        "challenge prefix; see docs/metrics.md)")
    r.add_argument("--nsd-tolerance-mm", type=float,
                   help=f"tolerance of the normalised surface Dice in mm (default {NSD_TOLERANCE_MM})")
    r.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"],
                   help="forward-pass precision per model (default auto: on CUDA bf16 or fp16 when the deterministic "
                        "Dice of a check case moves by <= 0.001 in every region, else fp32; on CPU fp32)")
    r.add_argument("--mc-batch", help="passes per forward call (default auto: timed once per model before the first "
                                      "patient; give a number for bit-identical shards on different machines)")
    r.add_argument("--prefetch", type=int, help="patients loaded ahead in a background thread (default 2; 0: inline)")
    r.add_argument("--shard", help="i/n: only shard i of n of the sorted patients (a Slurm array task); "
                                   "merge the shard databases afterwards with `python -m core merge`")
    r.add_argument("--workers", type=int, help="N shards in parallel (local process pool, or Ray tasks with "
                                               "--executor ray), each in its own <db>.shard-i-of-n.duckdb, merged into --db")
    r.add_argument("--executor", choices=["local", "ray"], help="local (default) or ray")
    r.add_argument("--ray-address", help="Ray cluster address (auto, host:6379, ray://host:10001); default: start a "
                                         "local Ray instance")
    r.add_argument("--keep-shards", action="store_true", help="keep the shard databases after the merge")
    r.set_defaults(fn=cmd_run)
    m = sub.add_parser("merge", help="merge shard databases into one results database")
    m.add_argument("--db", required=True, help="the merged database (created when missing)")
    m.add_argument("shards", nargs="+", help="shard databases (written by --shard i/n runs)")
    m.add_argument("--no-quality", action="store_true", help="do not recompute the quality prediction")
    m.set_defaults(fn=cmd_merge)
    dv = sub.add_parser("derive", help="(re)build the app's derived tables (per-patient summaries, bins as lists, "
                                       "cohort bin totals) of a database written by an older version")
    dv.add_argument("--db", required=True)
    dv.add_argument("--run", help="one run id (default: every run)")
    dv.set_defaults(fn=cmd_derive)
    c = sub.add_parser("compare", help="compare two results databases row for row (timings and absolute paths "
                                       "left out); exit status 1 when they differ")
    c.add_argument("a", help="first database (e.g. before a change)")
    c.add_argument("b", help="second database (e.g. after it)")
    c.add_argument("--rel-tol", type=float, default=1e-12, help="relative tolerance of float columns (default 1e-12)")
    c.set_defaults(fn=cmd_compare)
    rp = sub.add_parser(
        "report", help="write a study report of one run: one self-contained HTML file that opens offline",
        description="Write the study report of one run as one self-contained HTML file (plotly.js inlined once, no "
                    "network needed to open it): the run's provenance (runs row: created_at, cohort, code_version, "
                    "device, config), the model comparison with 95 % patient-bootstrap intervals (Dice, AUROC, "
                    "dataset ECE per model, method and region), the reliability diagram of each region, the "
                    "entropy strata, the paired tests of the first two models (Dice and ECE, Wilcoxon + Holm) and "
                    "the patients the quality model flags. The database is opened read-only.",
        epilog="example: python -m core report --db data/results.duckdb --out report.html")
    rp.add_argument("--db", required=True, help="the results database")
    rp.add_argument("--run", help="run id (default: the newest run)")
    rp.add_argument("--method", help="method of the diagrams, strata, paired tests and flags (default: mc_dropout "
                                     "when the run has it, else its first method); the comparison shows every method")
    rp.add_argument("--mask", choices=["brain", "roi"], default="brain", help="voxel set of the calibration numbers "
                                                                             "(default brain)")
    rp.add_argument("--out", default="report.html", help="the HTML file to write (default report.html)")
    rp.set_defaults(fn=cmd_report)
    ex = sub.add_parser("export-reviews", help="export the label maps of reviewed patients (default: 'needs "
                                               "correction') as a NIfTI folder for a segmentation editor")
    ex.add_argument("--db", required=True, help="the results database (reviews.sqlite beside it)")
    ex.add_argument("--run", help="run id (default: the newest run)")
    ex.add_argument("--model", required=True)
    ex.add_argument("--method", help="whose label map (default: deterministic when it has maps)")
    ex.add_argument("--status", nargs="+", default=["needs correction"], choices=list(REVIEW_STATUSES),
                    help="latest review statuses to export (default: 'needs correction')")
    ex.add_argument("--out", required=True, help="the folder to write")
    ex.add_argument("--zip", help="also write the folder as this zip file")
    ex.set_defaults(fn=cmd_export_reviews)
    t = sub.add_parser("train", help="train a demo architecture on a cohort's train split")
    t.add_argument("--model", choices=["SegResNet", "UNet-Res"], required=True)
    t.add_argument("--cohort", default=str(DEMO_COHORT))
    t.add_argument("--out", required=True)
    t.add_argument("--epochs", type=int, help="default: the demo model's (models.DEMO_MODELS)")
    t.add_argument("--lr", type=float)
    t.add_argument("--seed", type=int)
    t.set_defaults(fn=cmd_train)
    args = p.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
