"""Training of the tile encoder: binary cross-entropy, optax Adam, early stopping.

Loss per batch: mean over tiles of  w y softplus(-z) + (1 - y) softplus(z)
(z the logit, y the label, w = ``pos_weight``).  Adam's step size follows a
cosine decay from ``learning_rate`` to 5% of it over ``max_epochs``.  Each epoch visits the training
fields once in a seeded random order (random flips and quarter turns when
``augment``); the model with the lowest validation loss is kept, and training
stops after ``patience`` epochs without improvement or ``max_epochs``.
The kept model's decision threshold is calibrated on the validation fields: the
tile probability with the best F1 there (stored as ``EncoderSpec.threshold``).
"""

from __future__ import annotations

import dataclasses
import time

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax

from psfax.clusters.config import ClusterFieldConfig
from psfax.clusters.dataset import FieldSet
from psfax.clusters.encoder import EncoderSpec, TileEncoder, band_normalisation, cast_model, new_encoder
from psfax.clusters.metrics import best_f1_threshold, confusion
from psfax.device import compute_context, resolve_device
from psfax.errors import InputError


@dataclasses.dataclass(frozen=True)
class EpochRecord:
    epoch: int
    train_loss: float
    val_loss: float
    val_f1: float
    seconds: float


@dataclasses.dataclass(frozen=True)
class TrainResult:
    model: TileEncoder
    spec: EncoderSpec
    history: list[EpochRecord]
    best_epoch: int


def bce_loss(logits, labels, pos_weight: float):
    """Mean weighted binary cross-entropy with logits."""
    return jnp.mean(pos_weight * labels * jax.nn.softplus(-logits) + (1 - labels) * jax.nn.softplus(logits))


def spec_from_config(cfg: ClusterFieldConfig) -> EncoderSpec:
    t = cfg.train
    return EncoderSpec(tile=cfg.field.tile, widths=t.widths, context_layers=t.context_layers, groups=t.groups,
                       field_size=cfg.field.size, bands=cfg.field.bands)


def init_model(cfg: ClusterFieldConfig, train: FieldSet, seed: int) -> tuple[TileEncoder, EncoderSpec]:
    """A fresh encoder whose normalisation comes from the training images."""
    spec = spec_from_config(cfg)
    centre, scale = band_normalisation(train.images, seed=seed)
    return new_encoder(spec, centre, scale, seed), spec


def _make_steps(optimiser, pos_weight: float):
    @eqx.filter_jit
    def train_step(model, opt_state, images, labels):
        def loss_fn(m):
            return bce_loss(jax.vmap(m)(images), labels, pos_weight)

        loss, grads = eqx.filter_value_and_grad(loss_fn)(model)
        updates, opt_state = optimiser.update(grads, opt_state, eqx.filter(model, eqx.is_array))
        return eqx.apply_updates(model, updates), opt_state, loss

    @eqx.filter_jit
    def eval_step(model, images, labels):
        logits = jax.vmap(model)(images)
        return bce_loss(logits, labels, pos_weight), logits

    return train_step, eval_step


def _augment(rng: np.random.Generator, images: np.ndarray, labels: np.ndarray):
    """The same random quarter turn and flip applied to a batch's images and labels."""
    k = int(rng.integers(4))
    images, labels = np.rot90(images, k, axes=(2, 3)), np.rot90(labels, k, axes=(1, 2))
    if rng.integers(2):
        images, labels = images[..., ::-1], labels[..., ::-1]
    return np.ascontiguousarray(images), np.ascontiguousarray(labels)


def _evaluate(eval_step, model, data: FieldSet, batch: int, dtype):
    """Mean loss, F1 at probability 0.5, and the (n, T, T) logits of ``data``."""
    losses, logits_all = [], []
    for start in range(0, len(data), batch):
        idx = np.arange(start, start + batch) % len(data)  # static batch shape; wrapped rows dropped below
        loss, logits = eval_step(model, jnp.asarray(data.images[idx], dtype), jnp.asarray(data.labels[idx], dtype))
        n = min(batch, len(data) - start)
        losses.append(float(loss) * n)
        logits_all.append(np.asarray(logits)[:n])
    logits_all = np.concatenate(logits_all)
    f1 = confusion(data.labels, logits_all > 0).scores()["f1"]
    return sum(losses) / len(data), f1, logits_all


def train_encoder(cfg: ClusterFieldConfig, train: FieldSet, val: FieldSet, *, seed: int = 0,
                  max_epochs: int | None = None, patience: int | None = None, init=None, device=None,
                  progress: bool = True) -> TrainResult:
    """Train an encoder on ``train``, early-stopped on ``val``; return the best model and the history.

    ``init``: an already trained ``(model, spec)`` to start from (its weights and band normalisation;
    its architecture must be the config's), instead of fresh weights.
    """
    from rich.progress import Progress

    t = cfg.train
    if len(train) < t.batch_size:
        raise InputError(f"training set has {len(train)} fields, fewer than train.batch_size={t.batch_size}")
    dev = resolve_device(device)
    dtype = np.dtype(t.dtype)
    epochs = t.max_epochs if max_epochs is None else max_epochs
    patience = t.patience if patience is None else patience
    rng = np.random.default_rng(seed)
    with compute_context(dtype, dev):
        if init is None:
            model, spec = init_model(cfg, train, seed)
        else:
            model, spec = init[0], spec_from_config(cfg)
            if dataclasses.replace(init[1], threshold=spec.threshold, candidate_cut=spec.candidate_cut) != spec:
                raise InputError(f"the initial model's architecture {init[1]} is not the config's {spec}")
        model = cast_model(model, dtype)
        steps = len(train) // t.batch_size
        schedule = optax.cosine_decay_schedule(t.learning_rate, decay_steps=epochs * steps, alpha=0.05)
        optimiser = optax.adam(schedule)
        opt_state = optimiser.init(eqx.filter(model, eqx.is_array))
        train_step, eval_step = _make_steps(optimiser, t.pos_weight)
        best, best_loss, best_epoch, best_logits, history = model, np.inf, 0, None, []
        with Progress(disable=not progress) as bar:
            task = bar.add_task("training", total=epochs * steps)
            for epoch in range(1, epochs + 1):
                t0 = time.perf_counter()
                order = rng.permutation(len(train))
                losses = []
                for s in range(steps):
                    idx = np.sort(order[s * t.batch_size:(s + 1) * t.batch_size])
                    images, labels = train.images[idx], train.labels[idx]
                    if t.augment:
                        images, labels = _augment(rng, images, labels)
                    model, opt_state, loss = train_step(model, opt_state, jnp.asarray(images, dtype),
                                                        jnp.asarray(labels, dtype))
                    losses.append(float(loss))
                    bar.advance(task)
                val_loss, val_f1, val_logits = _evaluate(eval_step, model, val, t.batch_size, dtype)
                history.append(EpochRecord(epoch, float(np.mean(losses)), val_loss, val_f1,
                                           time.perf_counter() - t0))
                bar.console.log(f"epoch {epoch}: train loss {np.mean(losses):.4f}, "
                                f"val loss {val_loss:.4f}, val F1 {val_f1:.3f}")
                if val_loss < best_loss:
                    best, best_loss, best_epoch, best_logits = model, val_loss, epoch, val_logits
                elif epoch - best_epoch >= patience:
                    break
    threshold = best_f1_threshold(val.labels, 1.0 / (1.0 + np.exp(-best_logits.astype(np.float64))))
    spec = dataclasses.replace(spec, threshold=threshold)
    return TrainResult(cast_model(best, np.float32), spec, history, best_epoch)
