"""``psfax clusters``: simulate | train | infer | evaluate."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(no_args_is_help=True, help="Galaxy-cluster fields: simulate, train, infer, evaluate.")

CONFIG_HELP = "Shipped config name (ci, faithful) or a YAML file."


@app.command()
def simulate(out: Path = typer.Argument(..., help="Output data-set directory."),
             config: str = typer.Option("ci", help=CONFIG_HELP),
             seed: Optional[int] = typer.Option(None, help="Override the config's seed."),
             n_train: Optional[int] = typer.Option(None, help="Override dataset.n_train."),
             n_val: Optional[int] = typer.Option(None, help="Override dataset.n_val."),
             n_test: Optional[int] = typer.Option(None, help="Override dataset.n_test."),
             device: Optional[str] = typer.Option(None, help="cpu or gpu (default: JAX's default).")) -> None:
    """Draw catalogs from the prior, render g,r,i,z fields and write shards with tile labels."""
    import dataclasses

    from psfax.clusters.config import load_config
    from psfax.clusters.dataset import simulate_dataset
    from psfax.outputs import check_output_dir

    check_output_dir(out, "data-set directory")
    cfg = load_config(config)
    sizes = {k: v for k, v in (("n_train", n_train), ("n_val", n_val), ("n_test", n_test)) if v is not None}
    cfg = dataclasses.replace(cfg, seed=cfg.seed if seed is None else seed,
                              dataset=dataclasses.replace(cfg.dataset, **sizes))
    simulate_dataset(cfg, out, device=device)
    typer.echo(f"wrote {cfg.dataset.n_train}/{cfg.dataset.n_val}/{cfg.dataset.n_test} train/val/test fields to {out}")


@app.command()
def train(data: Path = typer.Argument(..., help="Data-set directory written by `simulate`."),
          out: Path = typer.Option(..., help="Model path stem (writes <stem>.npz and <stem>.json)."),
          seed: int = typer.Option(0, help="Seed of the initial weights and batch order."),
          max_epochs: Optional[int] = typer.Option(None, help="Override train.max_epochs."),
          patience: Optional[int] = typer.Option(None, help="Override train.patience (epochs without a better val loss)."),
          learning_rate: Optional[float] = typer.Option(None, help="Override train.learning_rate (start of the "
                                                        "cosine decay)."),
          init: Optional[Path] = typer.Option(None, help="Start from this model's weights (stem; same architecture) "
                                              "instead of fresh ones."),
          device: Optional[str] = typer.Option(None, help="cpu or gpu.")) -> None:
    """Train the tile encoder on the train split, early-stopped on the val split; choose its decision threshold
    and candidate cut on the val split; score it on test."""
    import dataclasses

    from psfax.clusters.dataset import load_split, read_dataset_config
    from psfax.clusters.encoder import load_model, save_model
    from psfax.clusters.evaluate import calibrate_candidate_cut, evaluate_model, json_ready, load_truth
    from psfax.outputs import check_output_file

    check_output_file(out.with_suffix(".npz"))
    t0 = time.perf_counter()
    start = None if init is None else load_model(init)
    cfg = read_dataset_config(data)
    if learning_rate is not None:
        cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, learning_rate=learning_rate))
    train_set, val_set = load_split(data, "train"), load_split(data, "val")
    from psfax.clusters.train import train_encoder

    result = train_encoder(cfg, train_set, val_set, seed=seed, max_epochs=max_epochs,
                          patience=patience, init=None if start is None else start[:2], device=device)
    spec, cut_record = calibrate_candidate_cut(result.model, result.spec, val_set.images, load_truth(data, "val"),
                                               cfg, device=device)
    record = {"data": str(data), "config": cfg.to_dict(), "seed": seed, "best_epoch": result.best_epoch,
              "max_epochs": cfg.train.max_epochs if max_epochs is None else max_epochs,
              "patience": cfg.train.patience if patience is None else patience,
              "n_train": len(train_set), "n_val": len(val_set), "wall_s": round(time.perf_counter() - t0, 1),
              "init": None if start is None else {"model": str(init), "record": start[2]},
              "history": [dataclasses.asdict(h) for h in result.history],
              "candidate_cut": {"data": str(data), "split": "val", **cut_record}}
    if list(Path(data).glob("test-*.images.npy")):
        record["test"] = json_ready(evaluate_model(result.model, spec, data, cfg, device=device))
    paths = save_model(result.model, spec, out, record)
    typer.echo(json.dumps(record.get("test", {}), indent=2))
    typer.echo(f"wrote {', '.join(map(str, paths))}")


@app.command()
def calibrate(data: Path = typer.Argument(..., help="Data-set directory written by `simulate` (its val split)."),
              out: Path = typer.Option(..., help="Model path stem to write (the same weights, the new cut)."),
              model: Optional[Path] = typer.Option(None, help="Model stem (default: the shipped model)."),
              min_richness: float = typer.Option(50.0, help="The cut balances the completeness of clusters "
                                                 "this rich (0: all) against the purity of all candidates."),
              device: Optional[str] = typer.Option(None, help="cpu or gpu.")) -> None:
    """Choose a model's candidate cut (members) on the val split of DATA for the best per-cluster F1
    (completeness for richness >= --min-richness, purity) and write the model with it; `train` does the
    same on its own val split with the default richness."""
    from psfax.clusters.dataset import load_split
    from psfax.clusters.encoder import default_model_stem, load_model, save_model
    from psfax.clusters.evaluate import calibrate_candidate_cut, load_truth
    from psfax.clusters.infer import model_prior
    from psfax.outputs import check_output_file

    check_output_file(out.with_suffix(".npz"))
    stem = model or default_model_stem()
    net, spec, record = load_model(stem)
    val = load_split(data, "val")
    spec, cut_record = calibrate_candidate_cut(net, spec, val.images, load_truth(data, "val"), model_prior(stem),
                                               min_richness=min_richness, device=device)
    record["candidate_cut"] = {"data": str(data), "split": "val", **cut_record}
    paths = save_model(net, spec, out, record)
    typer.echo(json.dumps(record["candidate_cut"], indent=2))
    typer.echo(f"wrote {', '.join(map(str, paths))}")


@app.command()
def infer(image: Path = typer.Argument(..., help="FITS file: a (4, ny, nx) g,r,i,z cube in the first image HDU."),
          out_dir: Path = typer.Option(..., help="Output directory."),
          model: Optional[Path] = typer.Option(None, help="Model stem (default: the shipped model)."),
          batch_size: int = typer.Option(8, help="Windows per batch."),
          window: Optional[int] = typer.Option(None, help="Window side in pixels (default: the training field size)."),
          threshold: Optional[float] = typer.Option(None, help="Tile probability threshold for candidates "
                                                    "(default: the model's calibrated threshold)."),
          device: Optional[str] = typer.Option(None, help="cpu or gpu."),
          dtype: Optional[str] = typer.Option(None, help="float32 or float64 (default: float64 on CPU).")) -> None:
    """Stream the encoder over a large image: tile probability map (FITS) and candidates (Parquet)."""
    from psfax.clusters.infer import infer_file
    from psfax.outputs import check_output_dir

    check_output_dir(out_dir, "--out-dir")
    paths = infer_file(image, model, out_dir=out_dir, batch_size=batch_size, window=window,
                       threshold=threshold, device=device, dtype=dtype, progress=True)
    typer.echo("wrote " + ", ".join(map(str, paths)))


@app.command()
def evaluate(data: Path = typer.Argument(..., help="Data-set directory written by `simulate`; with --seeds, the "
                                         "directory where the fresh fields are simulated (seed-<S>/, reused)."),
             model: Optional[Path] = typer.Option(None, help="Model stem (default: the shipped model)."),
             split: str = typer.Option("test", help="Split to score."),
             seeds: Optional[str] = typer.Option(None, help="Comma-separated seeds: simulate and score one fresh "
                                                 "data set per seed (mean and standard error across seeds)."),
             n_fields: int = typer.Option(64, help="With --seeds: test fields per seed (val: a quarter, >= 16)."),
             config: Optional[str] = typer.Option(None, help=CONFIG_HELP + " With --seeds: the fields' prior; "
                                                  "always: the red sequence that centres the candidates "
                                                  "(default: the model's training config)."),
             match_radius: Optional[float] = typer.Option(None, help="Cluster match radius, pixels "
                                                          "(default: 2 tiles)."),
             figure: Optional[Path] = typer.Option(None, help="Write a completeness-vs-richness-and-redshift "
                                                   "figure (PNG) here."),
             out: Optional[Path] = typer.Option(None, help="Write the report as JSON here (and report.html beside it)."),
             device: Optional[str] = typer.Option(None, help="cpu or gpu.")) -> None:
    """Tile scores (precision, recall, F1, PR-AUC, with bootstrap standard errors) and per-cluster completeness
    and purity of the model and the counts-in-tile baseline."""
    from psfax.clusters.config import config_from_dict, load_config
    from psfax.clusters.encoder import default_model_stem, load_model
    from psfax.clusters.evaluate import evaluate_model, evaluate_seeds, json_ready
    from psfax.clusters.plots import plot_completeness
    from psfax.errors import InputError
    from psfax.io.atomic import atomic_path
    from psfax.io.report_page import write_metrics_report
    from psfax.outputs import check_output_file

    for path, what in ((out, "--out"), (figure, "--figure")):
        if path is not None:
            check_output_file(path, what)
    seed_list = None
    if seeds is not None:
        try:
            seed_list = [int(s) for s in seeds.split(",") if s.strip()]
        except ValueError:
            raise InputError(f"--seeds {seeds!r}: expected comma-separated integers") from None
    from psfax.clusters.infer import model_prior

    net, spec, record = load_model(model or default_model_stem())
    if seed_list is None:
        prior = load_config(config) if config is not None else model_prior(model)
        report = evaluate_model(net, spec, data, prior, split=split, match_radius=match_radius, device=device)
        reports = [report]
    else:
        if config is not None:
            cfg = load_config(config)
        elif "config" in record:
            cfg = config_from_dict(record["config"], f"model {model or default_model_stem()}")
        else:
            raise InputError("--seeds: the model records no training config; pass --config")
        report = evaluate_seeds(net, spec, cfg, seed_list, n_fields, data, match_radius=match_radius, device=device)
        reports = list(report["per_seed"].values())
    text = json.dumps(json_ready(report), indent=2)
    typer.echo(text)
    if out is not None:
        with atomic_path(out) as tmp:
            tmp.write_text(text)
        write_metrics_report(out.parent, "psfax clusters evaluate", report, files=[out])
    if figure is not None:
        plot_completeness(reports, figure)
