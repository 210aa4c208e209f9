pub mod protocol;
pub mod version;
pub mod worker;
pub mod zipf;
