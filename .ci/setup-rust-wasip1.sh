#!/usr/bin/env bash
# Set up a Rust toolchain that builds wasm32-wasip1 modules, and write an env file for it.
#
#   .ci/setup-rust-wasip1.sh                 # set up, write .ci/cache/rust-env.sh, print it
#   source .ci/cache/rust-env.sh             # then: cargo build --target wasm32-wasip1 --release
#   eval "$(.ci/setup-rust-wasip1.sh)"       # the same in one step
#
# Two ways to get there; the first that works wins:
#
# 1. rustup with the wasm32-wasip1 target installed (`rustup target add wasm32-wasip1`):
#    nothing to build; the env file only points CARGO/RUSTC at rustup's proxies.
# 2. Offline, from Debian bookworm(-security) packages only -- no crates.io, no
#    static.rust-lang.org: rustc-web/cargo-web 1.96, rust-web-src, wasi-libc and lld-22.
#    std is built once for wasm32-wasip1 into a sysroot ($WASI_SYSROOT); after that plain
#    stable rustc builds with `--sysroot`, passed through CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS
#    (never RUSTFLAGS: that would override the target flags). Crates come from Debian's
#    librust-*-dev packages through a cargo directory source (/usr/share/cargo/registry),
#    configured in a private CARGO_HOME with net.offline = true, so a crate's own files stay
#    normal and Cargo.lock is generated offline.
#
# Idempotent: packages are installed only when missing and the sysroot is rebuilt only when
# rustc changes (stamp file). Progress goes to stderr; stdout carries only the env file.
#
# Environment:
#   WASI_SYSROOT     where the sysroot lives (default: /opt/rust-wasip1-sysroot when it is
#                    up to date or writable, else .ci/cache/rust-wasip1-sysroot)
#   MCPKIT_RUST_ENV  env file to write (default: .ci/cache/rust-env.sh)
#   MCPKIT_RUST_MODE auto (default), rustup or debian: force one of the two ways
#   WITH_SERDE=0     skip the librust-serde-*-dev packages
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="$repo/.ci/cache"
env_file="${MCPKIT_RUST_ENV:-$cache/rust-env.sh}"
mode="${MCPKIT_RUST_MODE:-auto}"
target=wasm32-wasip1

log() { printf '%s\n' "setup-rust-wasip1: $*" >&2; }
die() { log "error: $*"; exit 1; }

mkdir -p "$(dirname "$env_file")"

write_env() {  # write the env file from stdin, then show it on stdout
  local tmp
  tmp="$(mktemp "$env_file.XXXXXX")"
  cat > "$tmp"
  mv -f "$tmp" "$env_file"
  log "wrote $env_file"
  cat "$env_file"
}

# --- 1. rustup with the target ---------------------------------------------------------------
if [ "$mode" != debian ] && command -v rustup >/dev/null 2>&1 \
   && rustup target list --installed 2>/dev/null | grep -qx "$target"; then
  cargo_bin="$(command -v cargo)"
  rustc_bin="$(command -v rustc)"
  log "using rustup ($(rustc --version)) with $target installed"
  write_env <<EOF
# written by .ci/setup-rust-wasip1.sh (rustup with $target)
export CARGO="$cargo_bin"
export RUSTC="$rustc_bin"
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
EOF
  exit 0
fi
[ "$mode" = rustup ] && die "rustup with the $target target not found; run: rustup target add $target"

# --- 2. Debian packages ----------------------------------------------------------------------
export DEBIAN_FRONTEND=noninteractive
pkgs=(rustc-web cargo-web rust-web-src wasi-libc lld-22)
[ "${WITH_SERDE:-1}" = 1 ] && pkgs+=(librust-serde-json-dev librust-serde-derive-dev)
missing=()
for p in "${pkgs[@]}"; do
  dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
done
if [ "${#missing[@]}" -gt 0 ]; then
  command -v apt-get >/dev/null 2>&1 || die "missing ${missing[*]} and no apt-get; on a non-Debian system install rustup and run: rustup target add $target"
  sudo=()
  if [ "$(id -u)" != 0 ]; then
    command -v sudo >/dev/null 2>&1 || die "installing ${missing[*]} needs root (or sudo)"
    sudo=(sudo -E)
  fi
  log "installing ${missing[*]}"
  "${sudo[@]}" apt-get update -qq >&2
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2 \
    || die "apt-get could not install ${missing[*]} (rustc-web/cargo-web come from bookworm-security)"
fi

RUSTC=/usr/bin/rustc
CARGO=/usr/bin/cargo
[ -x "$RUSTC" ] && [ -x "$CARGO" ] || die "$RUSTC or $CARGO missing after install"
LIBSRC="$("$RUSTC" --print sysroot)/lib/rustlib/src/rust/library"   # -> /usr/src/rustc-<ver>/library
[ -d "$LIBSRC/vendor" ] || die "rust sources not found at $LIBSRC (package rust-web-src)"
STAMP="$("$RUSTC" -vV | sha256sum | cut -c1-16)"
up_to_date() { [ "$(cat "$1/.stamp" 2>/dev/null || true)" = "$STAMP" ]; }
writable() {  # can we create/replace directory $1?
  local d="$1"
  while [ ! -e "$d" ]; do d="$(dirname "$d")"; done
  [ -w "$d" ]
}

if [ -n "${WASI_SYSROOT:-}" ]; then
  sysroot="$WASI_SYSROOT"
elif up_to_date /opt/rust-wasip1-sysroot; then
  sysroot=/opt/rust-wasip1-sysroot
elif up_to_date "$cache/rust-wasip1-sysroot"; then
  sysroot="$cache/rust-wasip1-sysroot"
elif writable /opt/rust-wasip1-sysroot; then
  sysroot=/opt/rust-wasip1-sysroot
else
  sysroot="$cache/rust-wasip1-sysroot"
fi

# --- 3. the sysroot: std for wasm32-wasip1, built once ----------------------------------------
if up_to_date "$sysroot"; then
  log "sysroot up to date: $sysroot"
else
  log "building std for $target into $sysroot (about a minute on 2 cores)"
  started=$SECONDS
  work="$(mktemp -d)"
  trap 'rm -rf "$work"' EXIT
  mkdir -p "$work/src" "$work/.cargo"
  cat > "$work/Cargo.toml" <<'EOF'
[package]
name = "wasip1-sysroot-builder"
version = "0.0.0"
edition = "2021"
[profile.release]
opt-level = 3
panic = "abort"
EOF
  echo 'fn main() {}' > "$work/src/main.rs"
  cat > "$work/.cargo/config.toml" <<EOF
[source.crates-io]
replace-with = "rust-std-vendor"
[source.rust-std-vendor]
directory = "$LIBSRC/vendor"
[target.$target]
linker = "/usr/lib/llvm-22/bin/wasm-ld"
# embed-bitcode=yes keeps LLVM bitcode in the std rlibs so user crates can use lto = true
rustflags = ["-C", "embed-bitcode=yes", "-C", "link-self-contained=no",
             "-L", "native=/usr/lib/wasm32-wasi", "-C", "link-arg=/usr/lib/wasm32-wasi/crt1-command.o"]
EOF
  ( cd "$work" && env -u RUSTFLAGS -u CARGO_ENCODED_RUSTFLAGS -u CARGO_BUILD_TARGET -u CARGO_TARGET_DIR \
      RUSTC="$RUSTC" RUSTC_BOOTSTRAP=1 CARGO_HOME="$work/cargo-home" \
      "$CARGO" build --offline --release --quiet --target "$target" -Zbuild-std=std,panic_abort ) >&2 \
    || die "building std for $target failed (see above)"

  # lay out a sysroot that looks like an official rust-std-wasm32-wasip1 install
  tmp_root="$sysroot.tmp.$$"
  rm -rf "$tmp_root"
  tlib="$tmp_root/lib/rustlib/$target/lib"
  host="$("$RUSTC" -vV | sed -n 's/^host: //p')"
  hdir="$tmp_root/lib/rustlib/$host"
  mkdir -p "$tlib/self-contained" "$hdir/bin"
  cp "$work/target/$target/release/deps/"lib*.rlib "$tlib/"
  for f in crt1-command.o crt1-reactor.o libc.a; do
    ln -s "/usr/lib/wasm32-wasi/$f" "$tlib/self-contained/$f"
  done
  ln -s /usr/lib/llvm-22/bin/lld "$hdir/bin/rust-lld"             # self-contained linker lookup
  ln -s "/usr/lib/rustlib/$host/lib" "$hdir/lib"
  echo "$STAMP" > "$tmp_root/.stamp"
  rm -rf "$sysroot"
  mkdir -p "$(dirname "$sysroot")"
  mv "$tmp_root" "$sysroot"
  log "sysroot built in $((SECONDS - started)) s: $sysroot ($(du -sh "$sysroot" | cut -f1))"
fi

# --- 4. a private CARGO_HOME: crates from Debian, offline ------------------------------------
cargo_home="$cache/cargo-home"
mkdir -p "$cargo_home"
config="$cargo_home/config.toml"
new_config="$(cat <<'EOF'
# written by .ci/setup-rust-wasip1.sh: crates come from Debian's librust-*-dev packages
[source.crates-io]
replace-with = "debian-packages"

[source.debian-packages]
directory = "/usr/share/cargo/registry"

[net]
offline = true
EOF
)"
if [ "$(cat "$config" 2>/dev/null || true)" != "$new_config" ]; then
  printf '%s\n' "$new_config" > "$config"
fi

write_env <<EOF
# written by .ci/setup-rust-wasip1.sh (Debian rustc-web, offline)
export RUSTC="$RUSTC"
export CARGO="$CARGO"
export CARGO_HOME="$cargo_home"
export WASI_SYSROOT="$sysroot"
export CARGO_TARGET_WASM32_WASIP1_RUSTFLAGS="--sysroot $sysroot"
unset RUSTFLAGS CARGO_ENCODED_RUSTFLAGS
EOF
