# `nix run .#demo`: the whole stack on the CPU (tritonserver + scripted engine + proxy),
# no GPU and no model download.
{
  lib,
  writeShellApplication,
  trtllm-stack,
}:
writeShellApplication {
  name = "trtllm-stack-demo";
  runtimeInputs = [ trtllm-stack ];
  text = ''
    exec ${lib.escapeShellArgs (import ./lib/apps.nix).demoArgv} "$@"
  '';
  meta.description = "CPU demo: tritonserver with the scripted engine and the OpenAI proxy";
}
