//! The `text` client codec (lines): see `client_codec.rs`.
#![no_main]

#[path = "common/client_codec.rs"]
mod client_codec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    client_codec::run(switchboard_core::ClientProtocol::Text, data);
});
