# A Hugging Face checkpoint pinned by revision and hash: a fixed-output derivation, so it may
# use the network inside the sandbox, and its content is checked. Give a commit id as
# `revision` (a branch like "main" moves, and the hash would then stop matching).
{
  stdenvNoCC,
  python3Packages,
  cacert,
  repo,
  revision,
  hash,
}:
stdenvNoCC.mkDerivation {
  name = "checkpoint-${builtins.replaceStrings [ "/" ] [ "--" ] repo}";
  nativeBuildInputs = [ python3Packages.huggingface-hub ];
  inherit repo revision;
  SSL_CERT_FILE = "${cacert}/etc/ssl/certs/ca-bundle.crt";
  impureEnvVars = [ "HF_TOKEN" ];
  outputHashMode = "recursive";
  outputHashAlgo = "sha256";
  outputHash = hash;
  buildCommand = ''
    export HOME="$TMPDIR" HF_HUB_DISABLE_TELEMETRY=1
    huggingface-cli download "$repo" --revision "$revision" --local-dir "$out"
    # Download bookkeeping carries timestamps; it would make the hash unstable.
    rm -rf "$out/.cache"
  '';
}
