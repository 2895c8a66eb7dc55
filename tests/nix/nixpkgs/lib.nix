# The subset of nixpkgs' lib that nix/ uses, with the same semantics (see nix/README.md for
# the nixpkgs file each one comes from). Builtins only.
rec {
  inherit (builtins)
    attrNames
    attrValues
    concatStringsSep
    filter
    listToAttrs
    mapAttrs
    toJSON
    ;
  optional = cond: x: if cond then [ x ] else [ ];
  optionals = cond: xs: if cond then xs else [ ];
  optionalString = cond: s: if cond then s else "";
  optionalAttrs = cond: a: if cond then a else { };
  concatMapStringsSep = sep: f: xs: concatStringsSep sep (map f xs);
  concatStrings = concatStringsSep "";
  mapAttrsToList = f: a: map (n: f n a.${n}) (attrNames a);
  nameValuePair = name: value: { inherit name value; };
  mapAttrs' = f: a: listToAttrs (mapAttrsToList f a);
  genAttrs = names: f: listToAttrs (map (n: nameValuePair n (f n)) names);
  filterAttrs =
    pred: a:
    listToAttrs (map (n: nameValuePair n a.${n}) (filter (n: pred n a.${n}) (attrNames a)));
  escapeShellArg = s: "'${builtins.replaceStrings [ "'" ] [ "'\\''" ] (toString s)}'";
  escapeShellArgs = xs: concatStringsSep " " (map escapeShellArg xs);
  toShellVar = name: value: "${name}=${escapeShellArg value}";
  makeBinPath = drvs: concatStringsSep ":" (map (d: "${d}/bin") drvs);
  getExe = drv: "${drv}/bin/${drv.meta.mainProgram or drv.pname or drv.name}";
  hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
  hasSuffix =
    sfx: s:
    let
      ls = builtins.stringLength s;
      lx = builtins.stringLength sfx;
    in
    lx <= ls && builtins.substring (ls - lx) lx s == sfx;
  fix =
    f:
    let
      x = f x;
    in
    x;
  extends =
    overlay: f: final:
    let
      prev = f final;
    in
    prev // overlay final prev;
  mkOption = attrs: attrs // { _type = "option"; };
  mkEnableOption = name: mkOption {
    default = false;
    description = "Whether to enable ${name}.";
  };
  mkIf = cond: content: {
    _type = "if";
    condition = cond;
    inherit content;
  };
  types = {
    bool = "bool";
    str = "str";
    port = "port";
    package = "package";
    path = "path";
    ints.positive = "positive";
    nullOr = t: "nullOr ${t}";
    listOf = t: "listOf ${t}";
  };
}
