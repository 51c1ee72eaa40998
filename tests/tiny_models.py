"""Smallest settings of the neural detectors that still fit and score: for contract tests that
check behaviour, not quality."""

TINY_NET = {"hidden_sizes": (8, 8, 8), "epochs": 1, "random_state": 0, "device": "cpu"}
TINY_DDPM = {
    "epochs": 1,
    "width": 8,
    "block_hidden": 8,
    "time_width": 8,
    "n_blocks": 1,
    "reconstruction_steps": 3,
    "T": 20,
    "random_state": 0,
    "device": "cpu",
}
