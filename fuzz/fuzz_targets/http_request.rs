//! The VM API's HTTP request parser and router: any bytes a local client sends.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    if let Ok(api_server::http::Parsed::Complete { request, consumed }) =
        api_server::http::parse_request(data)
    {
        assert!(consumed <= data.len());
        let _ = api_server::routes::route(&request);
    }
});
