//! An OCI bundle's config.json, as zvm-runc validates it.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = oci_runtime::bundle::parse_config(text, std::path::Path::new("config.json"));
    }
});
