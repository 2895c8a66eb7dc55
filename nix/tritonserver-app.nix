# `nix run .#tritonserver-qwen3[-tp2|-tp4][-dp2|-dp4]`: the launcher bound to one engine store
# path and its variant (world size = tp, one MPI rank per GPU; -dpN: N such replicas, each its
# own tritonserver on its own GPUs and ports), NCCL PCIe defaults that the user's own
# environment overrides, mpirun/tritonserver from the NGC image via ngc-runtime.
# `variant` is a deployment from nix/lib/variants.nix (a variant plus replicas).
{
  lib,
  writeShellApplication,
  trtllm-stack,
  ngc-runtime,
  variant,
  engine,
}:
let
  nccl = import ./lib/nccl.nix;
  argv = (import ./lib/apps.nix).tritonArgv variant engine;
in
writeShellApplication {
  name = variant.appName;
  runtimeInputs = [
    trtllm-stack
    ngc-runtime
  ];
  text = nccl.shellDefaults + ''
    exec ${lib.escapeShellArgs argv} "$@"
  '';
  passthru = {
    inherit variant engine;
  };
  meta.description = "Triton + TensorRT-LLM serving ${variant.name} on ${toString (variant.gpus or variant.worldSize)} GPU(s)";
}
