# `nix flake check`: the Python unit tests on CPU, ruff, and the Nix/Python agreement check
# (variant names and NCCL defaults computed by nix/lib/*.nix vs. trtllm_stack).
# Imported with `pkgs` rather than callPackage: callPackage would add `override` to this set.
{ pkgs, src }:
let
  inherit (pkgs)
    runCommand
    python3
    ruff
    trtllm-stack
    trtllm-stack-variants
    ;
  pythonEnv = python3.withPackages (ps: [
    trtllm-stack
    ps.pytest
    ps.pytest-asyncio
    ps.hypothesis
    # nixpkgs pkgs/development/python-modules/h2 (python3Packages.h2): the reference
    # HTTP/2 implementation of tests/unit/triton/test_triton_h2_differential.py
    ps.h2
  ]);
in
{
  pytest-unit = runCommand "trtllm-stack-pytest-unit" { nativeBuildInputs = [ pythonEnv ]; } ''
    export HOME="$TMPDIR" PYTHONDONTWRITEBYTECODE=1
    cd ${src}
    python3 -m pytest -c python/pyproject.toml tests/unit -q -p no:cacheprovider
    touch "$out"
  '';

  ruff = runCommand "trtllm-stack-ruff" { nativeBuildInputs = [ ruff ]; } ''
    cd ${src}
    ruff check --no-cache --config python/pyproject.toml python tests nix
    ruff format --check --no-cache --config python/pyproject.toml python tests nix
    touch "$out"
  '';

  nix-eval =
    runCommand "trtllm-stack-nix-eval"
      {
        nativeBuildInputs = [ pythonEnv ];
        NIX_VARIANTS = builtins.toJSON trtllm-stack-variants.variants;
        NIX_DEPLOYMENTS = builtins.toJSON trtllm-stack-variants.deployments;
        NIX_NCCL = builtins.toJSON (import ./lib/nccl.nix).env;
      }
      ''
        # The verdict is the output, so a test can read it even when the store already has it.
        python3 ${./check_nix_eval.py} > "$out"
        cat "$out"
      '';
}
