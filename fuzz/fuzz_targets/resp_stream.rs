//! The RESP decoder (server and client side), fed arbitrary bytes in pieces.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rcache::fuzzing::resp_stream(data));
