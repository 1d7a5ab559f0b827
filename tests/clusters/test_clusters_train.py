"""Encoder training: the loss decreases, checkpoints round-trip, errors are named."""

import dataclasses
import json

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from psfax.clusters.config import load_config
from psfax.clusters.dataset import FieldSet
from psfax.clusters.encoder import load_model, save_model
from psfax.clusters.infer import predict_fields
from psfax.clusters.train import _make_steps, init_model, train_encoder
from psfax.errors import BadFileError, InputError, MissingFileError


def _toy_fields(n, seed=0, size=128):
    """Noise fields with bright round blobs in some tiles; label = tile holds a red blob."""
    rng = np.random.default_rng(seed)
    images = rng.normal(0.0, 5.0, (n, 4, size, size)).astype(np.float32)
    labels = np.zeros((n, size // 32, size // 32), np.uint8)
    yy, xx = np.mgrid[:size, :size]
    for i in range(n):
        for _ in range(6):
            x, y = rng.uniform(0, size - 1, 2)
            red = rng.uniform() < 0.5
            colour = np.array([0.2, 0.6, 1.0, 1.2]) if red else np.array([1.0, 0.8, 0.6, 0.5])
            blob = 300.0 * np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * 2.0**2))
            images[i] += colour[:, None, None] * blob
            if red:
                labels[i, int((y + 0.5) // 32), int((x + 0.5) // 32)] = 1
    return FieldSet(images, labels)


def test_a_few_adam_steps_reduce_the_loss():
    cfg = load_config("ci")
    data = _toy_fields(8)
    with jax.enable_x64(False):
        model, _ = init_model(cfg, data, seed=0)
        optimiser = optax.adam(3e-3)
        state = optimiser.init(eqx.filter(model, eqx.is_array))
        step, _ = _make_steps(optimiser, 1.0)
        x, y = jnp.asarray(data.images), jnp.asarray(data.labels, jnp.float32)
        losses = []
        for _ in range(15):
            model, state, loss = step(model, state, x, y)
            losses.append(float(loss))
    # 15 Adam steps on one batch: the loss must fall well below its start (seeded; measured ~0.3x)
    assert losses[-1] < 0.7 * losses[0]


def test_checkpoint_round_trip_and_errors(tmp_path):
    cfg = load_config("ci")
    data = _toy_fields(2)
    with jax.enable_x64(False):  # as training runs: float32 weights whatever an earlier test left global
        model, spec = init_model(cfg, data, seed=3)
    stem = tmp_path / "m"
    save_model(model, spec, stem, {"note": "toy"})
    loaded, spec2, record = load_model(stem.with_suffix(".npz"))
    assert spec2 == spec and record == {"note": "toy"}
    a, b = (predict_fields(m, data.images, batch_size=2) for m in (model, loaded))
    np.testing.assert_array_equal(a, b)  # float32 weights stored exactly
    with pytest.raises(MissingFileError, match=r"model .*nothing.npz: no such file"):
        load_model(tmp_path / "nothing")
    meta = json.loads(stem.with_suffix(".json").read_text())
    meta["spec"]["widths"] = [16, 16, 24, 32, 32]
    stem.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(BadFileError, match=r"m.npz: leaf \d+ has shape .* the spec needs"):
        load_model(stem)


def test_training_needs_a_full_batch():
    cfg = load_config("ci")
    with pytest.raises(InputError, match=r"training set has 2 fields, fewer than train.batch_size=16"):
        train_encoder(cfg, _toy_fields(2), _toy_fields(2), progress=False)


@pytest.mark.slow
def test_train_encoder_learns_the_toy_task():
    cfg = load_config("ci")
    cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, batch_size=8, max_epochs=12, patience=12))
    result = train_encoder(cfg, _toy_fields(64, seed=1), _toy_fields(16, seed=2), progress=False)
    # red vs blue blobs at S/N > 50 are separable: validation F1 must be high (measured ~0.95+)
    assert max(h.val_f1 for h in result.history) > 0.85
    assert result.history[result.best_epoch - 1].val_loss == min(h.val_loss for h in result.history)
