//! Validated item keys.
//!
//! A [`Key`] can only be built through [`Key::parse`] (keys written on a text or meta command
//! line) or [`Key::binary`] (binary protocol and base64 meta keys, which are binary-safe by
//! design), so code that holds one never re-checks it. It is a slice of the connection's read
//! buffer: parsing never copies.

use bytes::Bytes;

/// memcached's KEY_MAX_LENGTH.
pub const MAX_KEY_LEN: usize = 250;

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("key is empty")]
    Empty,
    #[error("key is longer than {MAX_KEY_LEN} bytes")]
    TooLong,
    #[error("key contains a space or control character")]
    BadChar,
}

#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Key(Bytes);

impl Key {
    /// A key as written in a text or meta command: 1 to 250 bytes, no spaces or control
    /// characters (DESIGN.md section 3).
    pub fn parse(raw: Bytes) -> Result<Key, KeyError> {
        Self::check_len(&raw)?;
        if raw.iter().any(|&b| b <= b' ' || b == 0x7f) {
            return Err(KeyError::BadChar);
        }
        Ok(Key(raw))
    }

    /// A binary-safe key (binary protocol, base64-decoded meta keys): only the length rule.
    pub fn binary(raw: Bytes) -> Result<Key, KeyError> {
        Self::check_len(&raw)?;
        Ok(Key(raw))
    }

    fn check_len(raw: &[u8]) -> Result<(), KeyError> {
        match raw.len() {
            0 => Err(KeyError::Empty),
            n if n > MAX_KEY_LEN => Err(KeyError::TooLong),
            _ => Ok(()),
        }
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn bytes(&self) -> &Bytes {
        &self.0
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({:?})", String::from_utf8_lossy(&self.0))
    }
}

impl AsRef<[u8]> for Key {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(Key::parse(Bytes::from_static(b"a")).is_ok());
        assert_eq!(Key::parse(Bytes::new()), Err(KeyError::Empty));
        assert!(Key::parse(Bytes::from(vec![b'k'; 250])).is_ok());
        assert_eq!(
            Key::parse(Bytes::from(vec![b'k'; 251])),
            Err(KeyError::TooLong)
        );
        assert_eq!(
            Key::parse(Bytes::from_static(b"a\tb")),
            Err(KeyError::BadChar)
        );
        assert_eq!(
            Key::parse(Bytes::from_static(b"a b")),
            Err(KeyError::BadChar)
        );
        assert!(Key::binary(Bytes::from_static(b"a \x00b")).is_ok());
    }
}
