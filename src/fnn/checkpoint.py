"""Checkpoints: params, optimizer state, step, RNG key and the network spec, in one ``.npz``.

No pickle anywhere: arrays are stored as numpy arrays and the metadata (spec,
step, user fields) as a JSON string. Files are written to a temporary file in
the same folder, flushed to disk, then renamed over the target, so a crash
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.network import MLP
from fnn.validation import check_params

FORMAT = "fnn-checkpoint-1"


class Checkpoint(NamedTuple):
    net: MLP
    params: list
    opt_state: Any
    step: int
    key: jax.Array | None
    meta: dict


def save(
    path: str | os.PathLike,
    *,
    net: MLP,
    params,
    opt_state=None,
    step: int = 0,
    key: jax.Array | None = None,
    meta: dict | None = None,
) -> Path:
    """Writes a checkpoint atomically. ``meta`` must be JSON-serialisable."""
    path = Path(path)
    check_params(net, params)
    arrays = {}
    for l, layer in enumerate(params):
        arrays[f"params/{l}/W"] = np.asarray(layer["W"])
        arrays[f"params/{l}/b"] = np.asarray(layer["b"])
    opt_leaves = jax.tree.leaves(opt_state) if opt_state is not None else []
    for i, leaf in enumerate(opt_leaves):
        arrays[f"opt_state/{i}"] = np.asarray(leaf)
    if key is not None:
        arrays["key"] = np.asarray(jax.random.key_data(key))
    header = {
        "format": FORMAT, "net": net.to_dict(), "step": int(step),
        "opt_state_leaves": len(opt_leaves), "has_opt_state": opt_state is not None,
        "has_key": key is not None, "meta": meta or {},
    }
    arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def load(
    path: str | os.PathLike, *, net: MLP | None = None, opt_state_like=None
) -> Checkpoint:
    """Reads a checkpoint.

    Args:
      path: the ``.npz`` file.
      net: if given, the checkpoint's architecture must equal it.
      opt_state_like: a template (e.g. ``optimizer.init(params)``) whose tree
        structure the stored optimizer state is restored into; without it the
        optimizer state is returned as a flat list of arrays.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (zipfile.BadZipFile, ValueError, KeyError, OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a readable fnn checkpoint ({type(err).__name__}: {err}); it is corrupt or "
            "truncated. Use an earlier checkpoint or retrain."
        ) from None
    if header.get("format") != FORMAT:
        raise ValueError(f"{path} has format {header.get('format')!r}, expected {FORMAT!r}.")
    stored = MLP.from_dict(header["net"])
    if net is not None and stored != net:
        raise ValueError(
            f"The checkpoint {path} holds {stored!r}, but the run asks for {net!r}: load it with the "
            "same architecture (flags --hidden/--activation), or start a new run."
        )
    dtype_of = lambda a: jnp.asarray(a)
    params = [{"W": dtype_of(arrays[f"params/{l}/W"]), "b": dtype_of(arrays[f"params/{l}/b"])}
              for l in range(stored.num_layers)]
    check_params(stored, params)
    opt_state = None
    if header["has_opt_state"]:
        leaves = [jnp.asarray(arrays[f"opt_state/{i}"]) for i in range(header["opt_state_leaves"])]
        if opt_state_like is not None:
            like_leaves, treedef = jax.tree.flatten(opt_state_like)
            shapes = [np.shape(a) for a in like_leaves]
            if shapes != [np.shape(a) for a in leaves]:
                raise ValueError(
                    f"The optimizer state in {path} does not match the optimizer of this run "
                    "(different optimizer?): resume with the optimizer it was saved with."
                )
            leaves = treedef.unflatten(
                [jnp.asarray(a, dtype=np.asarray(t).dtype) for a, t in zip(leaves, like_leaves)]
            )
        opt_state = leaves
    key = jax.random.wrap_key_data(jnp.asarray(arrays["key"])) if header["has_key"] else None
    return Checkpoint(stored, params, opt_state, header["step"], key, header["meta"])
