//! The shared secret of a cluster (`auth_token`): compared in constant time,
//! never printed.

use std::sync::Arc;

/// A token clients and daemons present with `auth`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<[u8]>);

impl Secret {
    pub fn new(token: &[u8]) -> Secret {
        Secret(token.into())
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    /// Whether `offered` is this token, in time that depends only on the
    /// lengths (never on where the first difference is).
    pub fn matches(&self, offered: &[u8]) -> bool {
        constant_time_eq(&self.0, offered)
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// Compares every byte of the longer input whatever it finds, so timing
/// tells nothing about a partly right guess.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = (a.len() ^ b.len()) as u64;
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= u64::from(x ^ y);
    }
    // Keep the optimizer from short-cutting the loop on the result.
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_match_only_themselves() {
        let s = Secret::new(b"s3cret");
        assert!(s.matches(b"s3cret"));
        for wrong in [
            &b""[..],
            b"s3cre",
            b"s3cret!",
            b"S3cret",
            b"s3cres",
            b"\0s3cret",
        ] {
            assert!(!s.matches(wrong), "{wrong:?}");
        }
        assert_eq!(format!("{s:?}"), "Secret(<redacted>)");
    }
}
