//! The `json` client codec (Workerman's JsonProtocol): see `client_codec.rs`.
#![no_main]

#[path = "common/client_codec.rs"]
mod client_codec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    client_codec::run(switchboard_core::ClientProtocol::Json, data);
});
