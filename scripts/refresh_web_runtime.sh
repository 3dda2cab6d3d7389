#!/usr/bin/env bash
# Refresh the browser runtime that `skin export --format web` copies: MediaPipe Tasks Vision
# from npm (Apache-2.0). Only what runs is kept: the ES module loader, ONE WASM build (the SIMD
# one, which every current browser runs), the licence and the version.
# Usage: scripts/refresh_web_runtime.sh [VERSION]   (default: the version in VERSION)
set -euo pipefail
cd "$(dirname "$0")/.."
dest=skincli/export/web_runtime
want="${1:-$(sed -n 's/^version=//p' "$dest/VERSION" 2>/dev/null || true)}"
want="${want:-latest}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "@mediapipe/tasks-vision@$want" >/dev/null)
tar -xzf "$tmp"/mediapipe-tasks-vision-*.tgz -C "$tmp"
pkg="$tmp/package"
version="$(node -p "require('$pkg/package.json').version")"
licence="$(node -p "require('$pkg/package.json').license")"
[ "$licence" = "Apache-2.0" ] || { echo "unexpected licence $licence" >&2; exit 1; }
mkdir -p "$dest/wasm"
rm -f "$dest"/wasm/*
# Named .js: every static server sends .js as JavaScript (not every one knows .mjs).
cp "$pkg/vision_bundle.mjs" "$dest/vision_bundle.js"
cp "$pkg/wasm/vision_wasm_internal.js" "$pkg/wasm/vision_wasm_internal.wasm" "$dest/wasm/"
# The npm package names its licence in package.json without shipping the text.
if [ -f "$pkg/LICENSE" ]; then cp "$pkg/LICENSE" "$dest/LICENSE"
elif [ -f /usr/share/common-licenses/Apache-2.0 ]; then
  cp /usr/share/common-licenses/Apache-2.0 "$dest/LICENSE"
elif [ ! -f "$dest/LICENSE" ]; then echo "no Apache-2.0 licence text found" >&2; exit 1; fi
chmod 644 "$dest/vision_bundle.js" "$dest"/wasm/* "$dest/LICENSE"
{
  echo "package=@mediapipe/tasks-vision"
  echo "version=$version"
  echo "license=$licence"
  echo "files=vision_bundle.js wasm/vision_wasm_internal.js wasm/vision_wasm_internal.wasm"
  (cd "$dest" && sha256sum vision_bundle.js wasm/vision_wasm_internal.js \
    wasm/vision_wasm_internal.wasm | sed 's/^/sha256=/')
} > "$dest/VERSION"
echo "web runtime: @mediapipe/tasks-vision $version in $dest"
