"""How good one short fine-tune gets (issue 13's quick build): the teacher stage's fine-tuning alone, with a
learning rate, warm-up, epoch count and optionally a slice of the model's layers, scored on validation (which
chooses) and test (which reports), plain argmax and with the top-probability threshold chosen on validation.

    python benchmarks/short_finetune.py --lr 3e-4 --warmup 0.1 --epochs 1
    python benchmarks/short_finetune.py --lr 3e-4 --warmup 0.1 --epochs 2 --layers 0,2,4,5

Each run appends one JSON line to --out (default benchmarks/results/short_finetune.jsonl). Training threads:
torch's default (set OMP_NUM_THREADS to share the machine).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from tempfile import TemporaryDirectory

import click

ROOT = Path(__file__).resolve().parents[1]


@click.command()
@click.option("--lr", type=float, default=1e-4, show_default=True, help="Peak learning rate.")
@click.option("--warmup", type=float, default=0.0, show_default=True, help="Warm-up share of the steps.")
@click.option("--epochs", type=float, default=1.0, show_default=True)
@click.option(
    "--layers", default="", help="Keep only these encoder layers (e.g. 0,2,4,5) before fine-tuning."
)
@click.option("--data", default=str(ROOT.parent / "shared" / "data" / "clinc150"), show_default=True)
@click.option(
    "--out", type=click.Path(path_type=Path), default=ROOT / "benchmarks/results/short_finetune.jsonl"
)
def main(lr: float, warmup: float, epochs: float, layers: str, data: str, out: Path) -> None:
    from transformers import Trainer

    from edgepack import architectures, metrics, models
    from edgepack import data as data_stage
    from edgepack.recipe import load_recipe
    from edgepack.training import PadCollator, predict_logits, seeded, tokenized_dataset, training_arguments

    recipe = load_recipe("clinc", {"data.source": data})
    splits, max_length = data_stage.run(recipe.data, recipe.teacher.model)
    base = models.resolve_model(recipe.teacher.model)
    tokenizer = models.load_tokenizer(base)
    train = tokenized_dataset(tokenizer, splits.texts["train"], max_length, splits.label_ids["train"])
    started = time.perf_counter()
    with TemporaryDirectory() as tmp, seeded(42):
        args = training_arguments(
            Path(tmp), epochs=epochs, learning_rate=lr, batch_size=32, seed=42, warmup_ratio=warmup
        )
        model = models.load_classifier(base, splits.labels)
        if layers:
            kept = [int(i) for i in layers.split(",")]
            architectures.keep_encoder_layers(model, kept, "--layers", "", setting="--layers")
        Trainer(model=model, args=args, train_dataset=train, data_collator=PadCollator(tokenizer)).train()
    seconds = time.perf_counter() - started
    logits = {
        s: predict_logits(model, tokenizer, splits.texts[s], max_length) for s in ("validation", "test")
    }
    report = metrics.split_report(logits, splits.label_ids, splits.oos_id())
    row = {
        "settings": {"lr": lr, "warmup": warmup, "epochs": epochs, "layers": layers or "all"},
        "train_seconds": round(seconds),
        "validation": round(report["validation"]["accuracy"], 4),
        "test": round(report["test"]["accuracy"], 4),
        "test_thresholded": round(report["test_thresholded"]["accuracy"], 4)
        if "test_thresholded" in report
        else None,
    }
    click.echo(json.dumps(row))
    with out.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
