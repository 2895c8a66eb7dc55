# The argv each app runs, as pure functions (tests evaluate them with nix-instantiate).
{
  # `trtllm-stack triton` bound to one engine store path and its variant; the launcher derives
  # the world size (one MPI rank per GPU) from the variant and the engine's config.json.
  # A deployment with replicas > 1 adds `--replicas N`: N tritonservers, each on its own
  # GPUs (CUDA_VISIBLE_DEVICES) and ports.
  tritonArgv =
    deployment: engine:
    [
      "trtllm-stack"
      "triton"
      "--engine"
      "${engine}"
      "--variant"
      (deployment.variantName or deployment.name)
    ]
    ++ (
      if (deployment.replicas or 1) > 1 then
        [
          "--replicas"
          (toString deployment.replicas)
        ]
      else
        [ ]
    );
  # The OpenAI-compatible proxy on 9000 over Triton's gRPC port on this machine.
  proxyArgv = [
    "trtllm-stack"
    "proxy"
    "--triton-url"
    "localhost:8001"
    "--port"
    "9000"
  ];
  demoArgv = [
    "trtllm-stack"
    "demo"
  ];
}
