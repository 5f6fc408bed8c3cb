"""Train a 2-D flow-matching model with the core and measure its samples against held-out data.

    python examples/toy_2d.py [--steps 1500] [--seed 0] [--scale 1.5]

CondOT path, logit-normal t, the accelerate trainer, Heun sampling and CFG on two classes (one
moon each). Prints the energy distance to held-out data for the untrained and trained model,
and the floor of the estimate (two held-out sets against each other). The code it runs is
`mdiff/toys.py`, written as an example of the core API.
"""

import argparse

import torch

from mdiff import toys

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scale", type=float, default=1.5, help="CFG scale for the guided row")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    result = toys.run_toy_2d(steps=args.steps, seed=args.seed, scale=args.scale, progress=True)
    print(toys.format_toy_2d(result))
