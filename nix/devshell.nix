# `nix develop`: Python with the serving and test dependencies, ruff, nixfmt.
{
  mkShell,
  python3,
  ruff,
  nixfmt-rfc-style,
  trtllm-stack,
}:
mkShell {
  packages = [
    (python3.withPackages (
      ps:
      trtllm-stack.propagatedBuildInputs
      ++ [
        ps.numpy
        ps.pydantic
        ps.pytest
        ps.pytest-asyncio
        ps.hypothesis
        ps.h2
        ps.mypy
        ps.openai
        ps.huggingface-hub
      ]
    ))
    ruff
    nixfmt-rfc-style
  ];
  # Work on python/ in place instead of the store copy.
  shellHook = ''
    export PYTHONPATH="$PWD/python''${PYTHONPATH:+:$PYTHONPATH}"
  '';
}
