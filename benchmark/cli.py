"""`fipbench` command line: run, ls, validate, leaderboard, sharpness.

Import-light on purpose: `fipbench ls` imports no torch; component modules load only when a verb needs them.
User errors (FipbenchError) print one line and exit 2.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from benchmark.errors import FipbenchError
from benchmark.registries import ALL

REPO_ROOT = Path(__file__).resolve().parents[1]


def resolve_config(name: str) -> Path:
    """A YAML path, or a preset name looked up in ./configs and in the installed repo's configs/."""
    path = Path(name)
    if path.suffix in (".yaml", ".yml") or path.exists():
        return path
    for root in (Path.cwd() / "configs", REPO_ROOT / "configs"):
        candidate = root / f"{name}.yaml"
        if candidate.is_file():
            return candidate
    presets = sorted({p.stem for root in (Path.cwd() / "configs", REPO_ROOT / "configs") if root.is_dir()
                      for p in root.glob("*.yaml")})
    raise FipbenchError(f"no config or preset named {name!r}; presets: {', '.join(presets) or '(none)'}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="fipbench", description="Backdoor-purification benchmark (FIP, Fast FIP, "
                                "baselines) across ML tasks.")
    sub = p.add_subparsers(dest="verb", required=True)

    run = sub.add_parser("run", help="run a matrix (default: the quick preset) and update the leaderboard")
    run.add_argument("config", nargs="?", default="quick", help="YAML matrix or preset name (default: quick)")
    run.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    run.add_argument("--cache", type=Path, default=Path(os.environ.get("FIPBENCH_CACHE", ".fipbench/artifacts")),
                     help="attack-artifact cache (default: $FIPBENCH_CACHE or .fipbench/artifacts)")
    run.add_argument("--data-root", type=Path, default=os.environ.get("FIPBENCH_DATA"),
                     help="root of local real datasets (default: $FIPBENCH_DATA)")
    run.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    run.add_argument("--force", action="store_true", help="recompute cells that already have records")
    run.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    run.add_argument("--no-sharpness", dest="sharpness", action="store_false",
                     help="skip the Hessian/Fisher sharpness figures before and after each defense")
    run.add_argument("--only", action="append", default=[], metavar="FIELD=PATTERN",
                     help="run only cells matching (fields: task, dataset, model, attack, defense, seed, artifact; "
                          "globs; comma = or; repeat = and), e.g. --only task=point_cloud --only defense=fip,fast_fip")
    run.add_argument("--skip", action="append", default=[], metavar="FIELD=PATTERN",
                     help="drop cells matching (same syntax as --only; repeat = or)")
    run.add_argument("--dry-run", action="store_true",
                     help="print the cell plan (done/pending, artifact cached/to train) and run nothing")
    run.add_argument("--executor", default="local",
                     help="where cells run: local (this process, default), processes (a pool on this machine) or "
                          "ray (a Ray cluster)")
    run.add_argument("--ray-address", default="auto",
                     help="Ray cluster address (default: auto, the cluster started by `ray start`; local: a "
                          "private one-node cluster)")
    run.add_argument("--cpus-per-cell", type=int, default=1,
                     help="CPUs a processes/Ray worker reserves; also its torch threads (default: 1)")
    run.add_argument("--workers", type=int, default=None,
                     help="processes executor: pool size (default: CPU cores // --cpus-per-cell)")
    run.add_argument("--gpus-per-cell", type=float, default=None,
                     help="GPUs a Ray task reserves (default: 1 with --device cuda, else 0)")
    run.add_argument("--retries", type=int, default=2, help="reruns of a cell whose Ray worker died (default: 2)")

    ls = sub.add_parser("ls", help="list registered components")
    ls.add_argument("kind", nargs="?", choices=sorted(ALL), help="one kind (default: all)")

    val = sub.add_parser("validate", help="check a matrix file without running it")
    val.add_argument("config")

    lb = sub.add_parser("leaderboard", help="rebuild results/leaderboard.{md,csv,tex,html} from the records")
    lb.add_argument("--results", type=Path, default=Path("results"))

    sh = sub.add_parser("sharpness", help="largest Hessian eigenvalue, Hessian trace and Fisher trace of a model "
                        "on a fixed clean batch")
    sh.add_argument("model", help="an attack-artifact directory or key (looked up in --cache), or a weights file "
                    "(.safetensors / weights-only .pt) together with --task, --dataset and --arch")
    sh.add_argument("--cache", type=Path, default=Path(os.environ.get("FIPBENCH_CACHE", ".fipbench/artifacts")))
    sh.add_argument("--task", default="image_classification")
    sh.add_argument("--dataset", help="dataset of a weights file (artifacts know their own)")
    sh.add_argument("--arch", help="model architecture of a weights file (artifacts know their own)")
    sh.add_argument("--data-root", type=Path, default=os.environ.get("FIPBENCH_DATA"))
    sh.add_argument("--split", choices=["holdout", "test"], default="holdout", help="where the clean batch comes from")
    sh.add_argument("--batch-size", type=int, default=None,
                    help="clean samples in the fixed batch (default: the task's own; 128 for images)")
    sh.add_argument("--seed", type=int, default=0, help="seed of the power-iteration and Hutchinson probes")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": _run, "ls": _ls, "validate": _validate, "leaderboard": _leaderboard,
                "sharpness": _sharpness}[args.verb](args)
    except FipbenchError as err:
        print(f"fipbench: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fipbench: interrupted; finished cells are saved, run the same command again to resume",
              file=sys.stderr)
        return 130


def _ls(args: argparse.Namespace) -> int:
    for kind in [args.kind] if args.kind else sorted(ALL):
        reg = ALL[kind]
        print(f"{kind}:")
        for name in reg.names():
            print(f"  {name:24s} {reg.origin(name)}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from benchmark.spec import load_matrix, validate

    matrix = load_matrix(resolve_config(args.config))
    validate(matrix)
    print(f"{matrix.source}: ok, {len(matrix.cells)} cells")
    return 0


def _run(args: argparse.Namespace) -> int:
    from benchmark.plan import format_plan, plan_rows, select
    from benchmark.registries import EXECUTORS
    from benchmark.spec import load_matrix, validate

    matrix = load_matrix(resolve_config(args.config))
    validate(matrix)
    cells = select(matrix.cells, args.only, args.skip)
    executor_cls = EXECUTORS.get(args.executor, "--executor")  # before any work: a typo fails at once
    import torch

    from benchmark import leaderboard
    from benchmark.executors import ExecutorOptions
    from benchmark.runner import Runner

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise FipbenchError(f"--device {args.device} asked for, but torch sees no CUDA device; use --device cpu")
    runner = Runner(args.results, args.cache, data_root=args.data_root, device=args.device, force=args.force,
                    sharpness=args.sharpness)
    if args.dry_run:
        print(format_plan(plan_rows(cells, None if args.force else runner.store, runner.cache)))
        return 0
    gpus = args.gpus_per_cell if args.gpus_per_cell is not None else float(args.device.startswith("cuda"))
    executor = executor_cls(ExecutorOptions(address=args.ray_address, cpus_per_cell=args.cpus_per_cell,
                                            gpus_per_cell=gpus, retries=args.retries, workers=args.workers))
    print(f"fipbench: {matrix.name}: {len(cells)} of {len(matrix.cells)} cells -> {args.results}/records "
          f"({args.executor} executor)")
    failed = [r for r in runner.run(cells, executor) if r["status"] == "failed"]
    records = runner.store.all()
    paths = leaderboard.write(records, args.results)
    print(f"fipbench: leaderboard written to {', '.join(str(p) for k, p in paths.items() if k != 'sharpness')}")
    _warn_mixed(records)
    if failed:  # every other cell finished; the exit status tells scripts that these did not
        print(f"fipbench: {len(failed)} of {len(cells)} cells failed (recorded with their reasons; the leaderboard "
              f"lists them): {failed[0]['reason']}" + (" ..." if len(failed) > 1 else ""), file=sys.stderr)
        return 1
    return 0


def _warn_mixed(records) -> None:
    from benchmark import leaderboard

    for line in leaderboard.mixed_artifacts(records):
        print(f"fipbench: warning: {line}", file=sys.stderr)


def _leaderboard(args: argparse.Namespace) -> int:
    from benchmark import leaderboard
    from benchmark.store import ResultStore

    records = ResultStore(args.results).all()
    paths = leaderboard.write(records, args.results)
    print(open(paths["md"]).read())
    _warn_mixed(records)
    return 0


def _sharpness(args: argparse.Namespace) -> int:
    import json

    from benchmark.cache import load_weights
    from benchmark.registries import TASKS
    from benchmark.rng import generator
    from defenses.fisher import sharpness

    path = Path(args.model)
    if not path.exists() and (args.cache / args.model).is_dir():
        path = args.cache / args.model
    if path.is_dir():  # an artifact: its manifest names task, dataset, model and task config
        try:
            spec = json.loads((path / "manifest.json").read_text())["spec"]["task"]
        except (OSError, ValueError, KeyError):
            raise FipbenchError(f"{path}: not an attack artifact (no readable manifest.json); pass an artifact "
                                f"directory or a weights file with --task/--dataset/--arch") from None
        task_name, dataset, arch, task_cfg = spec["name"], spec["dataset"], spec["model"], spec["config"]
        weights = path / "model.safetensors"
    elif path.is_file():
        if not (args.dataset and args.arch):
            raise FipbenchError(f"{path} is a weights file: also pass --dataset and --arch (and --task if it is "
                                f"not image_classification)")
        task_name, dataset, arch, task_cfg, weights = args.task, args.dataset, args.arch, {}, path
    else:
        raise FipbenchError(f"no artifact or weights file {args.model!r} (looked in . and {args.cache}); "
                            f"`ls {args.cache}` lists artifact keys")
    task_cls = TASKS.get(task_name)
    task = task_cls(dataset, task_cls.Config.from_dict(task_cfg, "task_config"), data_root=args.data_root)
    model = task.build_model(arch)
    load_weights(model, weights)
    data = getattr(task.splits(), args.split)
    batch_size = args.batch_size or task.sharpness_batch
    out = sharpness(model, data, task, generator=generator(args.seed, "sharpness"), batch_size=batch_size)
    print(f"{task_name}/{dataset}/{arch} on {min(batch_size, len(data))} {args.split} samples:")
    for key, value in out.items():
        print(f"  {key:16s} {value:12.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
