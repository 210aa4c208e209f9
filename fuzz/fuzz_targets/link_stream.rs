//! The link protocol (requests, responses, refill chunks applied to a store).
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rcache::fuzzing::link_stream(data));
