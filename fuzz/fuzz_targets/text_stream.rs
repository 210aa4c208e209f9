//! The text protocol decoder, fed arbitrary bytes in pieces.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| rcache::fuzzing::text_stream(data));
