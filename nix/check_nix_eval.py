"""Flake check: what nix/lib computes must equal what trtllm_stack computes from the same TOML.

Reads the Nix side from the environment (NIX_VARIANTS, NIX_NCCL: JSON) and exits non-zero
naming the first disagreement.
"""

import json
import os
import sys

from trtllm_stack.triton.launch_plan import NCCL_PCIE_DEFAULTS
from trtllm_stack.variants import load_table


def main() -> int:
    nix_variants = json.loads(os.environ["NIX_VARIANTS"])
    table = load_table()
    py = [(v.name, v.package_name, v.app_name, v.tp) for v in table.variants]
    nx = [(v["name"], v["packageName"], v["appName"], v["worldSize"]) for v in nix_variants]
    if py != nx:
        print(f"variant names differ:\n  python: {py}\n  nix:    {nx}", file=sys.stderr)
        return 1
    py_dep = [(d.name, d.app_name, d.replicas, d.gpus) for d in table.deployments]
    nx_dep = [
        (d["name"], d["appName"], d["replicas"], d["gpus"])
        for d in json.loads(os.environ["NIX_DEPLOYMENTS"])
    ]
    if py_dep != nx_dep:
        print(f"deployments differ:\n  python: {py_dep}\n  nix:    {nx_dep}", file=sys.stderr)
        return 1
    nix_nccl = json.loads(os.environ["NIX_NCCL"])
    py_nccl = NCCL_PCIE_DEFAULTS
    if dict(py_nccl) != nix_nccl:
        print(f"NCCL defaults differ: python {py_nccl} nix {nix_nccl}", file=sys.stderr)
        return 1
    print(
        f"nix-eval: {len(nx)} variants, {len(nx_dep)} deployments and {len(nix_nccl)} NCCL"
        " defaults agree"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
