"""The per-epoch log of a training run: log.csv (appended across resumes) and TensorBoard, rank 0 only."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

from app.checkpoints import TrainState

CSV_FIELDS = ("epoch", "step", "lr", "seconds", "loss", "loss_expr", "loss_au", "loss_va", "consistency",
              "consistency_weight", "val_total", "val_va", "val_expr", "val_au", "ccc_valence", "ccc_arousal",
              "expr_f1", "expr_accuracy", "au_f1", "au_accuracy", "best_total")
PER_CLASS = ("threshold_", "acceptance_", "precision_")  # --ssl pseudo_label's epoch columns


class EpochLog:
    """log.csv (one row per epoch, appended across resumes) and TensorBoard; rank 0 only."""

    def __init__(self, out: Path, tensorboard: bool, extra_fields: tuple[str, ...] = ()) -> None:
        self.csv_path = out / "log.csv"
        self.fields = CSV_FIELDS + extra_fields  # e.g. each parameter group's lr (lr_<name>) when there are several
        self.tb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(out / "tb"))
            except ImportError:
                print("tensorboard is not installed: logging to log.csv only", file=sys.stderr)

    def write(self, row: dict) -> None:
        new = not self.csv_path.exists()
        with open(self.csv_path, "a", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.fields, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        if self.tb is not None:
            for k, v in row.items():
                if k.startswith(("val_", "ccc_", "expr_", "au_")) and isinstance(v, float):
                    self.tb.add_scalar(f"val/{k}", v, row["epoch"])
                elif k.startswith(PER_CLASS) and isinstance(v, float):  # pseudo-labelling, per class and epoch
                    self.tb.add_scalar(f"pseudo_label/{k}", v, row["epoch"])
            self.tb.flush()

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def epoch_row(epoch: int, state: TrainState, lr: float, seconds: float, train: dict, scores: dict | None) -> dict:
    """One log row: the epoch's mean losses and the validation scores (of the tasks the run scores; none when
    the epoch was not validated)."""
    row = {"epoch": epoch, "step": state.step, "lr": lr, "seconds": seconds, **train, "best_total": state.best_score}
    if scores is None:
        return row
    row["val_total"] = scores["total"]
    columns = {"va": {"val_va": "score", "ccc_valence": "ccc_valence", "ccc_arousal": "ccc_arousal"},
               "expr": {"val_expr": "score", "expr_f1": "f1", "expr_accuracy": "accuracy"},
               "au": {"val_au": "score", "au_f1": "f1", "au_accuracy": "accuracy"}}
    for task, names in columns.items():
        if task in scores:
            row.update({col: scores[task][key] for col, key in names.items()})
    return row
