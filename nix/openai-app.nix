# `nix run .#openai-qwen3`: the OpenAI-compatible proxy on port 9000 over Triton gRPC on
# localhost:8001. The tokenizer comes from the engine being served: pass
# `--tokenizer-dir $(nix build --print-out-paths .#qwen3-32b-engine-tp4)` (an engine store
# path holds its tokenizer files). The app does not pin an engine itself, because that would
# make `nix run .#openai-qwen3` build a GPU engine of one fixed variant.
{
  lib,
  writeShellApplication,
  trtllm-stack,
  tokenizerDir ? null,
}:
let
  argv =
    (import ./lib/apps.nix).proxyArgv
    ++ lib.optionals (tokenizerDir != null) [
      "--tokenizer-dir"
      "${tokenizerDir}"
    ];
in
writeShellApplication {
  name = "openai-qwen3";
  runtimeInputs = [ trtllm-stack ];
  text = ''
    exec ${lib.escapeShellArgs argv} "$@"
  '';
  meta.description = "OpenAI-compatible API for Qwen3 on :9000 over Triton gRPC";
}
