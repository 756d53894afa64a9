"""Checkpoints: params, optimizer state, step, RNG key and the network spec, in one ``.npz``.

No pickle anywhere: arrays are stored as numpy arrays and the metadata (spec,
step, user fields) as a JSON string. Files are written to a temporary file in
the same folder, flushed to disk, then renamed over the target, so a crash
never leaves a half-written checkpoint.
"""

from __future__ import annotations

import json
import os
import zipfile
import zlib
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from fnn.io.files import atomic_write
from fnn.core.network import MLP
from fnn.core.validation import check_params

FORMAT = "fnn-checkpoint-1"


class Checkpoint(NamedTuple):
    """What :func:`load` returns: the network, its params (a list of ``{"W", "b"}``),
    the optimizer state (a tree, or a flat list without a template), the step
    (completed epochs), the run's PRNG key, the user's ``meta`` dict, and
    ``batch``, the batches of the next epoch already applied."""

    net: MLP
    params: list
    opt_state: Any
    step: int
    key: jax.Array | None
    meta: dict
    batch: int = 0


def save(
    path: str | os.PathLike,
    *,
    net: MLP,
    params,
    opt_state=None,
    step: int = 0,
    key: jax.Array | None = None,
    meta: dict | None = None,
    batch: int = 0,
) -> Path:
    """Writes a checkpoint atomically (see :func:`fnn.io.files.atomic_write`).

    ``step`` is the number of completed epochs (or steps: the caller's unit);
    ``batch`` the batches of the next epoch already applied (non-zero only for a
    mid-epoch state). ``meta`` must be JSON-serialisable.
    """
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
        "has_key": key is not None, "meta": meta or {}, "batch": int(batch),
    }
    try:
        arrays["header"] = np.frombuffer(json.dumps(header).encode(), np.uint8)
    except (TypeError, ValueError) as err:
        raise ValueError(f"meta must be JSON-serialisable (numbers, strings, lists, dicts): {err}.") from None
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: np.savez(f, **arrays))
    return path


def load(
    path: str | os.PathLike, *, net: MLP | None = None, opt_state_like=None
) -> Checkpoint:
    """Reads a checkpoint.

    Args:
      path: the ``.npz`` file.
      net: if given, the checkpoint's architecture must equal it. Its
        activations also resolve user-defined activation names stored in the file.
      opt_state_like: a template (e.g. ``optimizer.init(params)``) whose tree
        structure the stored optimizer state is restored into; without it the
        optimizer state is returned as a flat list of arrays.

    Raises:
      FileNotFoundError: no file at ``path``.
      ValueError: the file is corrupt, truncated, of another format, misses an
        array or a header field, or holds another architecture or optimizer.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"No checkpoint at {path}.")
    arrays, header = _read(path)
    try:
        return _restore(path, arrays, header, net, opt_state_like)
    except KeyError as err:
        raise ValueError(
            f"{path} is not a complete fnn checkpoint: it has no {err.args[0]!r}. It is damaged; use an "
            "earlier checkpoint or retrain."
        ) from None
    except (TypeError, IndexError, AttributeError) as err:
        raise ValueError(
            f"{path} is not a valid fnn checkpoint ({type(err).__name__}: {err}). It is damaged; use an "
            "earlier checkpoint or retrain."
        ) from None


def _read(path: Path) -> tuple[dict, dict]:
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except (zipfile.BadZipFile, zlib.error, ValueError, KeyError, OSError, EOFError, UnicodeDecodeError) as err:
        raise ValueError(
            f"{path} is not a readable fnn checkpoint ({type(err).__name__}: {err}); it is corrupt or "
            "truncated. Use an earlier checkpoint or retrain."
        ) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise ValueError(f"{path} has format {found!r}, expected {FORMAT!r}.")
    fields = {"net": dict, "step": int, "opt_state_leaves": int, "has_opt_state": bool, "has_key": bool,
              "meta": dict}
    for name, kind in fields.items():
        value = header.get(name)
        if not isinstance(value, kind) or (kind is int and (isinstance(value, bool) or value < 0)):
            raise ValueError(
                f"{path} is not a complete fnn checkpoint: its header field {name!r} is "
                f"{'missing' if name not in header else repr(value)}. It is damaged; use an earlier "
                "checkpoint or retrain."
            )
    if not isinstance(header.get("batch", 0), int) or header.get("batch", 0) < 0:
        raise ValueError(f"{path} is damaged: its header field 'batch' is {header['batch']!r}.")
    return arrays, header


def _restore(path: Path, arrays: dict, header: dict, net: MLP | None, opt_state_like) -> Checkpoint:
    try:
        stored = MLP.from_dict(header["net"], net.activations if net is not None else ())
    except ValueError as err:
        raise ValueError(
            f"{path} describes a network fnn cannot rebuild ({err}) If it uses an activation of your own, "
            "pass net=MLP(...) built with that fnn.Activation."
        ) from None
    if net is not None and stored != net:
        raise ValueError(
            f"The checkpoint {path} holds {stored!r}, but the caller asks for {net!r}: load it with the "
            "same architecture, or start a new run."
        )
    params = [{"W": jnp.asarray(arrays[f"params/{l}/W"]), "b": jnp.asarray(arrays[f"params/{l}/b"])}
              for l in range(stored.num_layers)]
    check_params(stored, params)
    opt_state = None
    if header["has_opt_state"]:
        leaves = [jnp.asarray(arrays[f"opt_state/{i}"]) for i in range(header["opt_state_leaves"])]
        if opt_state_like is not None:
            opt_state = _unflatten_like(path, leaves, opt_state_like)
        else:
            opt_state = leaves
    key = jax.random.wrap_key_data(jnp.asarray(arrays["key"])) if header["has_key"] else None
    return Checkpoint(stored, params, opt_state, int(header["step"]), key, header["meta"],
                      int(header.get("batch", 0)))


def _unflatten_like(path: Path, leaves: list, like):
    like_leaves, treedef = jax.tree.flatten(like)
    if [np.shape(a) for a in like_leaves] != [np.shape(a) for a in leaves]:
        raise ValueError(
            f"The optimizer state in {path} does not match the optimizer of this run "
            "(different optimizer?): resume with the optimizer it was saved with."
        )
    return treedef.unflatten([jnp.asarray(a, dtype=np.asarray(t).dtype) for a, t in zip(leaves, like_leaves)])
