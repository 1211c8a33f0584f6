//! The committed C header must equal a fresh cbindgen generation (build.rs writes it to OUT_DIR).

#[test]
fn committed_header_matches_fresh_generation() {
    let fresh = include_str!(concat!(env!("OUT_DIR"), "/asfda.h"));
    let committed_path = concat!(env!("CARGO_MANIFEST_DIR"), "/include/asfda.h");
    let committed = std::fs::read_to_string(committed_path).expect("include/asfda.h is committed");
    assert!(
        committed == fresh,
        "include/asfda.h differs from the header cbindgen generates from the current sources; \
         run `make header` and commit the result"
    );
}

#[test]
fn header_declares_the_core_api() {
    let header = include_str!(concat!(env!("OUT_DIR"), "/asfda.h"));
    for symbol in [
        "asfda_version",
        "ASFDA_VERSION_MAJOR",
        "asfda_last_error_message",
        "asfda_volume_load",
        "asfda_volume_from_buffer",
        "asfda_volume_free",
        "asfda_runtime_info_json",
        "ASFDA_STATUS_OK = 0",
        "ASFDA_LPS",
    ] {
        assert!(header.contains(symbol), "header lacks {symbol}");
    }
}
