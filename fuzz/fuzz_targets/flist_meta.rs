//! An `.fl` file (an SQLite database anyone may have made): opened, its tree loaded and
//! validated, and summarised, as `zvm flist inspect` does.
#![no_main]

use std::io::Write;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(mut file) = tempfile::NamedTempFile::new() else {
        return;
    };
    if file.write_all(data).is_err() {
        return;
    }
    if let Ok(reader) = flist_fetcher::meta::Reader::open(file.path()) {
        if let Ok(tree) = flist_fetcher::tree::Tree::load(&reader) {
            let _ = flist_fetcher::inspect::summarize(&reader, &tree);
        }
    }
});
