"""Would early stopping on held-out loss help the logits-trained DTE-C? Held-out loss vs AUC-ROC.

Trains the default DTE-C network (logits cross-entropy, authors' recipe) on 90% of the
semi-supervised training rows (seed 0) and, at a few epochs, prints the cross-entropy on the held-out
10% (20 fixed noise draws per row, so the numbers are comparable across epochs) beside the test
AUC-ROC of the expected-bin score. A question for studies/parametric_quality/parametric_quality.md, not a
library feature.

    python studies/parametric_quality/categorical_heldout_vs_auc.py --datasets 6_cardio,38_thyroid
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from dtpm_fast._torch_utils import iter_minibatches
from dtpm_fast.evaluation.protocol import load_dataset, prepare_split
from dtpm_fast.parametric.network import build_mlp
from dtpm_fast.parametric.optimizer import make_optimizer
from dtpm_fast.parametric.training import categorical_loss
from dtpm_fast.schedule import ve_sigma2

DATA = Path(__file__).resolve().parents[3] / "shared" / "data" / "adbench" / "Classical"
T, BINS, CHECKPOINTS = 400, 7, (10, 25, 50, 100, 200, 400)


def run(name: str, data: Path) -> str:
    torch.manual_seed(0)
    sigma = torch.sqrt(torch.tensor(ve_sigma2(T), dtype=torch.float32))
    X, y = load_dataset(data, name)
    X_train, X_test, y_test = prepare_split(X, y, seed=0, protocol="semi")
    X_train, X_test = (torch.tensor(a, dtype=torch.float32) for a in (X_train, X_test))
    order = torch.randperm(len(X_train))
    n_val = len(X_train) // 10
    X_val, X_fit = X_train[order[:n_val]], X_train[order[n_val:]]
    noise = torch.Generator().manual_seed(1)
    t_val = torch.randint(0, T, (20, n_val), generator=noise)
    eps_val = torch.randn((20, n_val, X_train.shape[1]), generator=noise)
    net = build_mlp(X_train.shape[1], (256, 512, 256), BINS, 0.5)
    optimizer = make_optimizer(net.parameters(), 1e-4, 5e-4, torch.device("cpu"))
    cells = []
    for epoch in range(1, CHECKPOINTS[-1] + 1):
        net.train()
        for idx in iter_minibatches(len(X_fit), 64, shuffle=True, device=torch.device("cpu")):
            x0, t = X_fit[idx], torch.randint(0, T, (len(idx),))
            loss = categorical_loss(
                net(x0 + sigma[t].unsqueeze(1) * torch.randn_like(x0)), t, T, BINS, "logits"
            )
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if epoch in CHECKPOINTS:
            net.eval()
            with torch.no_grad():
                held_out = np.mean(
                    [
                        categorical_loss(
                            net(X_val + sigma[t_val[k]].unsqueeze(1) * eps_val[k]),
                            t_val[k],
                            T,
                            BINS,
                            "logits",
                        ).item()
                        for k in range(len(t_val))
                    ]
                )
                p = torch.softmax(net(X_test), dim=1).numpy()
            auc = 100 * roc_auc_score(y_test, p @ np.arange(BINS))
            cells.append(f"{held_out:.4f} / {auc:.2f}")
    return f"| {name} | " + " | ".join(cells) + " |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--datasets", default="6_cardio,38_thyroid")
    parser.add_argument("--data", type=Path, default=DATA)
    args = parser.parse_args()
    print("| data set | " + " | ".join(f"epoch {e}: held-out CE / AUC" for e in CHECKPOINTS) + " |")
    print("|---" * (len(CHECKPOINTS) + 1) + "|")
    for name in args.datasets.split(","):
        print(run(name, args.data), flush=True)


if __name__ == "__main__":
    main()
