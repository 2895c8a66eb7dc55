# Our Python package from python/ (pyproject, hatchling), with the serving dependencies the
# apps need. The `build` extra (tensorrt-llm) is deliberately absent: TensorRT-LLM comes from
# the pinned NGC image (ngc-image.nix), the same one the server runs.
{
  lib,
  buildPythonPackage,
  hatchling,
  numpy,
  pydantic,
  fastapi,
  uvicorn,
  pydantic-settings,
  tritonclient,
  hpack,
  transformers,
  tokenizers,
  jinja2,
  orjson,
  jsonschema,
  prometheus-client,
  httpx,
  aiohttp,
  matplotlib,
  # python/ of this repository
  pythonSrc,
}:
let
  project = (builtins.fromTOML (builtins.readFile (pythonSrc + "/pyproject.toml"))).project;
  # Caches and build leftovers never enter the store path (they would change its hash).
  ignored = [
    "__pycache__"
    ".pytest_cache"
    ".mypy_cache"
    ".ruff_cache"
    "build"
    "dist"
  ];
  serveDeps = [
    fastapi
    uvicorn
    pydantic-settings
    tritonclient
    hpack
    transformers
    tokenizers
    jinja2
    orjson
    jsonschema
    prometheus-client
    httpx
    aiohttp
  ];
in
buildPythonPackage {
  pname = project.name;
  inherit (project) version;
  pyproject = true;
  src = builtins.path {
    path = pythonSrc;
    name = "trtllm-stack-source";
    filter =
      path: type:
      !(builtins.elem (baseNameOf path) ignored || lib.hasSuffix ".egg-info" (baseNameOf path));
  };
  build-system = [ hatchling ];
  dependencies = [
    numpy
    pydantic
  ];
  optional-dependencies.serve = serveDeps ++ [ matplotlib ];
  # The apps run the proxy and launcher from this package, so serving deps are always in
  # (matplotlib, for benchmark plots only, stays optional).
  propagatedBuildInputs = serveDeps;
  # The test suite runs as a flake check (nix/checks.nix), not in the package build.
  doCheck = false;
  pythonImportsCheck = [
    "trtllm_stack"
    "trtllm_stack.cli"
  ];
  meta = {
    description = project.description;
    license = lib.licenses.asl20 or { };
    mainProgram = "trtllm-stack";
    platforms = [ "x86_64-linux" ];
  };
}
