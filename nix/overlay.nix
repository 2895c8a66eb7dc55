# nixpkgs overlay: our package, the NGC runtime, one engine and one tritonserver app per
# variant of python/trtllm_stack/variants.toml, the proxy and demo apps.
# `src` is the repository root (a path).
{ src }:
final: prev:
let
  variants = import ./lib/variants.nix { tomlFile = src + "/python/trtllm_stack/variants.toml"; };
  byPackage = builtins.listToAttrs (
    map (v: {
      name = v.packageName;
      value = final.callPackage ./engine.nix { variant = v; };
    }) variants.variants
  );
in
{
  trtllm-stack = final.python3Packages.callPackage ./trtllm-stack.nix { pythonSrc = src + "/python"; };
  ngc-tritonserver-image = final.callPackage ./ngc-image.nix { image = variants.runtime.tritonImage; };
  ngc-runtime = final.callPackage ./ngc-runtime.nix { };
  trtllm-stack-variants = variants;
  trtllm-stack-engines = byPackage;
  trtllm-stack-apps =
    builtins.listToAttrs (
      map (d: {
        name = d.appName;
        value = final.callPackage ./tritonserver-app.nix {
          variant = d;
          engine = final.trtllm-stack-engines.${d.packageName};
        };
      }) variants.deployments
    )
    // {
      openai-qwen3 = final.callPackage ./openai-app.nix { };
      demo = final.callPackage ./demo-app.nix { };
    };
}
