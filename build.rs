//! Generates the C header with cbindgen into OUT_DIR. The committed `include/asfda.h` is the
//! copy consumers use; `tests/header_drift.rs` fails when it differs from this fresh generation.
//! Set ASFDA_UPDATE_HEADER=1 (or run `make header`) to rewrite the committed copy.

use std::env;
use std::path::PathBuf;

fn main() {
    let crate_dir = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo")).join("asfda.h");
    println!("cargo:rerun-if-changed=src/ffi");
    println!("cargo:rerun-if-changed=cbindgen.toml");
    println!("cargo:rerun-if-changed=Cargo.toml"); // the version macros
    println!("cargo:rerun-if-env-changed=ASFDA_UPDATE_HEADER");

    let mut config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml")).expect("cbindgen.toml is valid");
    config.after_includes = Some(version_macros());
    // Only the C ABI layer (src/ffi/mod.rs and the modules it declares) is parsed: public Rust
    // items elsewhere never leak into the header.
    cbindgen::Builder::new()
        .with_config(config)
        .with_src(crate_dir.join("src").join("ffi").join("mod.rs"))
        .generate()
        .expect("cbindgen could not generate the C header")
        .write_to_file(&out);

    if env::var_os("ASFDA_UPDATE_HEADER").is_some_and(|v| v == "1") {
        std::fs::copy(&out, crate_dir.join("include").join("asfda.h")).expect("cannot write include/asfda.h");
    }
    set_soname();
}

/// Gives the shared library a SONAME, so programs linked against it record the ABI version they
/// need (DT_NEEDED) rather than the build path, and packagers can install versions side by side.
/// Before 1.0 every minor version may change the ABI (semver), so it is part of the name:
/// libasfda.so.0.1 (libasfda.so.1 from 1.0 on). cmake/install.sh installs the file under this
/// name with the libasfda.so development link.
fn set_soname() {
    if env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux") {
        let v = |k: &str| env::var(k).expect("set by cargo");
        let major = v("CARGO_PKG_VERSION_MAJOR");
        let abi = if major == "0" { format!("0.{}", v("CARGO_PKG_VERSION_MINOR")) } else { major };
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libasfda.so.{abi}");
    }
}

/// Version macros so C code can check at compile time what asfda_version() reports at run time.
fn version_macros() -> String {
    let v = |k: &str| env::var(k).expect("set by cargo");
    format!(
        "\n#define ASFDA_VERSION \"{}\"\n#define ASFDA_VERSION_MAJOR {}\n#define ASFDA_VERSION_MINOR {}\n#define ASFDA_VERSION_PATCH {}\n{}",
        v("CARGO_PKG_VERSION"),
        v("CARGO_PKG_VERSION_MAJOR"),
        v("CARGO_PKG_VERSION_MINOR"),
        v("CARGO_PKG_VERSION_PATCH"),
        MUST_USE_MACRO
    )
}

/// Marks the functions returning an AsfdaStatus (cbindgen.toml `[fn] must_use`), so that C and
/// C++ compilers warn when a status is ignored; empty for compilers without the attribute.
const MUST_USE_MACRO: &str = "
#if defined(__GNUC__) || defined(__clang__)
#define ASFDA_MUST_USE __attribute__((warn_unused_result))
#else
#define ASFDA_MUST_USE
#endif
";
