# One TensorRT-LLM engine from the variant table, built and verified with the NGC image's
# TensorRT-LLM (the one the server runs). Needs a GPU of the variant's architecture:
#   - a builder with GPU access that advertises the "cuda" system feature
#     (requiredSystemFeatures; on NixOS, programs.nix-required-mounts exposes the GPU to such
#     builds inside the sandbox), or
#   - the seeds' way: `nix build .#qwen3-32b-engine --option sandbox false
#     --option extra-system-features cuda` on the GPU machine itself.
# The checkpoint is a fixed-output derivation when a revision and hash are given
# (`.override { checkpointRevision = "<commit>"; checkpointHash = "sha256-..."; }`);
# otherwise build-engine downloads it during the build, which is impure and needs the
# sandbox off, as in the seeds.
{
  lib,
  stdenvNoCC,
  callPackage,
  cacert,
  ngc-runtime,
  variant,
  checkpointRevision ? variant.checkpoint.revision,
  checkpointHash ? null,
  requireCudaFeature ? true,
}:
let
  checkpoint =
    if checkpointHash == null then
      null
    else
      callPackage ./checkpoint.nix {
        inherit (variant.checkpoint) repo;
        revision = checkpointRevision;
        hash = checkpointHash;
      };
in
stdenvNoCC.mkDerivation {
  name = variant.packageName;
  nativeBuildInputs = [ ngc-runtime ];
  requiredSystemFeatures = lib.optional requireCudaFeature "cuda";
  SSL_CERT_FILE = "${cacert}/etc/ssl/certs/ca-bundle.crt";
  impureEnvVars = [
    "HF_TOKEN"
    "CUDA_VISIBLE_DEVICES"
  ];
  variantName = variant.name;
  checkpointArgs = lib.optionals (checkpoint != null) [
    "--checkpoint"
    "${checkpoint}"
  ];
  buildCommand = ''
    export HOME="$TMPDIR/home"
    mkdir -p "$HOME"
    # Built under $TMPDIR (bound read-write in the image), moved to $out afterwards:
    # ngc-run binds /nix read-only.
    ngc-run python3 -m trtllm_stack build-engine --variant "$variantName" \
      --out "$TMPDIR/engine" $checkpointArgs
    ngc-run python3 -m trtllm_stack verify-engine --variant "$variantName" "$TMPDIR/engine"
    mv "$TMPDIR/engine" "$out"
  '';
  passthru = {
    inherit variant checkpoint;
  };
  meta = {
    description = "TensorRT-LLM engine ${variant.name} (${variant.checkpoint.gpuArch}, ${toString variant.tp} GPU)";
    platforms = [ "x86_64-linux" ];
  };
}
