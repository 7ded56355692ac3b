"""Content-addressed cache of backdoored models (attack artifacts).

    <cache>/<artifact_key>/model.safetensors   weights (safetensors: no pickle, nothing executes on load)
    <cache>/<artifact_key>/attack.safetensors  the attack's learned trigger state (generator, encoder, ...),
                                               only for attacks that learn one
    <cache>/<artifact_key>/manifest.json       spec, poisoned-index hash, versions, sha256 of both files,
                                               before-defense metrics, training time
    <cache>/<artifact_key>/failed.json         instead of the three: its training diverged (reason, spec,
                                               poisoned-index hash), so that the artifact's other cells fail
                                               at once rather than train it again; delete it to retry

An artifact directory appears atomically (built in a temp dir, then renamed), so a killed run leaves either a
complete artifact or none.  Loading re-hashes the weights: an artifact whose file does not match its manifest
is rebuilt, never trusted.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

from torch import nn

from benchmark._io import atomic_write_json, interrupts_deferred, sha256_file
from benchmark.errors import FipbenchError

MANIFEST_VERSION = 1


class ArtifactCache:
    def __init__(self, root: Path):
        self.root = Path(root)

    def dir(self, key: str) -> Path:
        return self.root / key

    def has(self, key: str) -> bool:
        """A complete-looking artifact is present (cheap: the weights are re-hashed only by `load`)."""
        return (self.dir(key) / "manifest.json").is_file()

    def failure(self, key: str) -> dict[str, Any] | None:
        """What `save_failure` wrote for this key (its "reason" and "poisoned_index_hash"), or None."""
        import json

        try:
            failure = json.loads((self.dir(key) / "failed.json").read_text())
        except (OSError, ValueError):
            return None
        return failure if isinstance(failure, dict) and isinstance(failure.get("reason"), str) else None

    def save_failure(self, key: str, failure: dict[str, Any]) -> Path:
        """Remember that this artifact cannot be trained as specified (a later `save` replaces the folder)."""
        path = self.dir(key) / "failed.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, failure)
        return path

    def load(self, key: str, model: nn.Module, attack: Any = None) -> dict[str, Any] | None:
        """Fill `model` (and `attack`'s learned trigger state) from the cache and return the manifest, or None
        if absent or corrupt."""
        import json

        d = self.dir(key)
        try:
            manifest = json.loads((d / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        weights = d / "model.safetensors"
        state_file = d / "attack.safetensors"
        state_ok = (manifest.get("attack_state_sha256") is None
                    or (state_file.is_file() and sha256_file(state_file) == manifest["attack_state_sha256"]))
        if manifest.get("manifest_version") != MANIFEST_VERSION or not weights.is_file() \
                or sha256_file(weights) != manifest.get("weights_sha256") or not state_ok:
            print(f"warning: artifact {d} is incomplete or corrupt; rebuilding it", file=sys.stderr)
            shutil.rmtree(d, ignore_errors=True)
            return None
        load_weights(model, weights)
        if attack is not None:
            from safetensors.torch import load_file

            with interrupts_deferred():
                state = load_file(str(state_file)) if manifest.get("attack_state_sha256") else {}
            attack.load_state_dict(state)
        return manifest

    def save(self, key: str, model: nn.Module, manifest: dict[str, Any],
             attack_state: dict[str, Any] | None = None) -> dict[str, Any]:
        from safetensors.torch import save_file, save_model

        self.root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            with interrupts_deferred():  # safetensors would turn a Ctrl-C here into a ValueError
                save_model(model, str(tmp / "model.safetensors"))
                if attack_state:
                    save_file({k: v.detach().cpu().contiguous() for k, v in attack_state.items()},
                              str(tmp / "attack.safetensors"))
            state_sha = sha256_file(tmp / "attack.safetensors") if attack_state else None
            manifest = {**manifest, "manifest_version": MANIFEST_VERSION,
                        "weights_sha256": sha256_file(tmp / "model.safetensors"), "attack_state_sha256": state_sha}
            atomic_write_json(tmp / "manifest.json", manifest)
            final = self.dir(key)
            if final.exists():  # a stale or corrupt copy: replace it
                shutil.rmtree(final)
            tmp.rename(final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return manifest


def load_weights(model: nn.Module, path: Path, state: dict | None = None) -> None:
    """Load a checkpoint into `model` safely: safetensors, or a weights-only torch file; never a pickle.

    A file whose tensors do not match the model's names and shapes is refused with a one-line error.  `state`:
    the file's tensors when the caller has read them already (`read_state`).
    """
    state = read_state(path) if state is None else state
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    shapes = [k for k in expected if k in state and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or shapes:
        detail = (f"missing {missing[:3]}" if missing else f"unexpected {unexpected[:3]}" if unexpected
                  else f"shape mismatch at {shapes[:3]}")
        raise FipbenchError(f"{path}: checkpoint does not fit model {type(model).__name__} ({detail}); "
                            f"check the model name and dataset it was trained for")
    model.load_state_dict(state, strict=True)


def read_state(path: Path) -> dict:
    """The tensors of a safetensors file or a weights-only torch file (a bare state dict, or one under
    "state_dict"); anything that needs unpickling beyond tensors is refused with a one-line error."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            with interrupts_deferred():  # else a Ctrl-C here would read as a malformed file
                state = load_file(str(path))
        except Exception as err:  # safetensors raises its own error types for a malformed header
            raise FipbenchError(f"{path}: not a valid safetensors file ({err}); rebuild or re-export it") from None
    else:
        import pickle

        import torch

        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError:
            raise FipbenchError(f"{path}: refusing to unpickle a checkpoint that holds more than weights; "
                                f"re-save it as a state_dict or convert it to safetensors") from None
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
        if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            raise FipbenchError(f"{path}: not a state dict of tensors; re-save it with torch.save(model.state_dict())")
    return state
