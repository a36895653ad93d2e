"""Rebuild the shipped digits models: python scripts/train_digits_model.py [--sigma 0.25 0.5]

Trains retrievalguard_fast.demo.digits.DigitsEmbeddingNet with the fixed recipe in
retrievalguard_fast.demo.digits.TRAINING_RECIPE under Gaussian noise of each sigma, on the gallery
split of the digits (queries held out), and writes retrievalguard_fast/weights/digits_mlp_sigma*.pt.
"""

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from retrievalguard_fast.demo.digits import WEIGHTS_DIR, default_weights_path, train_default_model  # noqa: E402


def main():
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--sigma", type=float, nargs="+", default=[0.25, 0.5])
    args = p.parse_args()
    WEIGHTS_DIR.mkdir(exist_ok=True)
    for sigma in args.sigma:
        model = train_default_model(sigma, verbose=False)
        state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
        torch.save(state, default_weights_path(sigma))
        print(f"wrote {default_weights_path(sigma)}")


if __name__ == "__main__":
    main()
