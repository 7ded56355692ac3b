"""`fipbench` command line: run, ls, validate, leaderboard.

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

    ls = sub.add_parser("ls", help="list registered components")
    ls.add_argument("kind", nargs="?", choices=sorted(ALL), help="one kind (default: all)")

    val = sub.add_parser("validate", help="check a matrix file without running it")
    val.add_argument("config")

    lb = sub.add_parser("leaderboard", help="rebuild results/leaderboard.{md,csv} from the records")
    lb.add_argument("--results", type=Path, default=Path("results"))
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"run": _run, "ls": _ls, "validate": _validate, "leaderboard": _leaderboard}[args.verb](args)
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
    from benchmark.spec import load_matrix, validate

    matrix = load_matrix(resolve_config(args.config))
    validate(matrix)
    import torch

    from benchmark import leaderboard
    from benchmark.runner import Runner

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise FipbenchError(f"--device {args.device} asked for, but torch sees no CUDA device; use --device cpu")
    runner = Runner(args.results, args.cache, data_root=args.data_root, device=args.device, force=args.force)
    print(f"fipbench: {matrix.name}: {len(matrix.cells)} cells -> {args.results}/records")
    runner.run(matrix.cells)
    paths = leaderboard.write(runner.store.all(), args.results)
    print(f"fipbench: leaderboard written to {paths['md']} and {paths['csv']}")
    return 0


def _leaderboard(args: argparse.Namespace) -> int:
    from benchmark import leaderboard
    from benchmark.store import ResultStore

    paths = leaderboard.write(ResultStore(args.results).all(), args.results)
    print(open(paths["md"]).read())
    return 0


if __name__ == "__main__":
    sys.exit(main())
