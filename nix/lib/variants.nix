# The variant table as Nix data: python/trtllm_stack/variants.toml read with builtins.fromTOML,
# names derived by the same rule as python/trtllm_stack/variants.py (tests compare the two).
# Builtins only, so `nix-instantiate --eval --strict --json` evaluates it without nixpkgs.
{
  tomlFile ? ../../python/trtllm_stack/variants.toml,
}:
let
  table = builtins.fromTOML (builtins.readFile tomlFile);
  lower = s: builtins.replaceStrings [ "A" "B" "C" "D" "E" "F" "G" "H" "I" "J" "K" "L" "M" "N" "O" "P" "Q" "R" "S" "T" "U" "V" "W" "X" "Y" "Z" ] [ "a" "b" "c" "d" "e" "f" "g" "h" "i" "j" "k" "l" "m" "n" "o" "p" "q" "r" "s" "t" "u" "v" "w" "x" "y" "z" ] s;

  # One [[variants]] entry -> everything Nix needs to build and serve it.
  mkVariant =
    entry:
    let
      model = table.models.${entry.model};
      quant = entry.quantization;
      tp = entry.tp;
      quantSuffix = if quant == model.default_quantization then "" else "-${lower quant}";
      tpSuffix = if tp == 1 then "" else "-tp${toString tp}";
      checkpoint = model.checkpoints.${quant};
      dp = entry.dp or [ 1 ];
    in
    {
      name = "${entry.model}-${lower quant}-tp${toString tp}";
      packageName = "${entry.model}${quantSuffix}-engine${tpSuffix}";
      appName = "tritonserver-${model.served_name}${quantSuffix}${tpSuffix}";
      model = entry.model;
      servedName = model.served_name;
      quantization = quant;
      inherit tp;
      worldSize = tp;
      maxBatchSize = entry.max_batch_size;
      maxSeqLen = entry.max_seq_len;
      maxNumTokens = entry.max_num_tokens;
      vramGbPerGpu = entry.vram_gb_per_gpu;
      inherit dp;
      checkpoint = {
        inherit (checkpoint) repo revision;
        gpuArch = checkpoint.gpu_arch;
      };
    };

  variants = map mkVariant table.variants;

  # A variant served as `replicas` data-parallel copies: the variant's attributes (same engine
  # package) with the deployment's name, app name and GPU count (tp x replicas).
  mkDeployment =
    v: replicas:
    let
      dpSuffix = if replicas == 1 then "" else "-dp${toString replicas}";
    in
    v
    // {
      variantName = v.name;
      name = v.name + dpSuffix;
      appName = v.appName + dpSuffix;
      inherit replicas;
      gpus = v.tp * replicas;
    };
  deployments = builtins.concatMap (v: map (mkDeployment v) v.dp) variants;
in
{
  inherit variants deployments;
  runtime = {
    tensorrtLlmVersion = table.runtime.tensorrt_llm_version;
    tritonImage = table.runtime.triton_image;
  };
  # Lookups by the Nix attribute names.
  byPackageName = builtins.listToAttrs (
    map (v: {
      name = v.packageName;
      value = v;
    }) variants
  );
  byAppName = builtins.listToAttrs (
    map (d: {
      name = d.appName;
      value = d;
    }) deployments
  );
}
