//! memcached's `-o` (`--extended`) sub-options and `-a`, the unix socket's access mask.
//!
//! `-o` takes a comma-separated list of `name[=value]`, and may be given more than once, as
//! in memcached. Only the options with a meaning here are accepted; the others are refused
//! by name rather than ignored, so that an operator never believes a setting took effect
//! (memcached's slab and LRU tuning has nothing to act on in meshcached's store). The
//! client TLS options (`ssl_*`) are read by [`super::tls`].

use super::tls::{parse_ssl_option, SslOptions};
use super::ConfigError;

/// memcached's default `-a`: only the owner may connect to the unix socket.
pub const DEFAULT_UNIX_MASK: u32 = 0o700;

/// The `-o` settings meshcached understands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extended {
    /// `idle_timeout=N`: close client connections that sent no command for more than N
    /// seconds; 0 (the default) never does.
    pub idle_timeout: u32,
    /// `ssl_chain_cert=`, `ssl_key=`, ...: client TLS, checked against `-Z` later.
    pub ssl: SslOptions,
}

/// Parses every `-o` argument, later ones overriding earlier ones.
pub fn parse_extended(args: &[String]) -> Result<Extended, ConfigError> {
    let mut ext = Extended::default();
    for opt in args.iter().flat_map(|a| a.split(',')).map(str::trim) {
        if opt.is_empty() {
            continue;
        }
        let (name, value) = match opt.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (opt, None),
        };
        match name {
            "idle_timeout" => {
                // memcached takes atoi(); a number is required here, and a negative or
                // junk value is an error rather than 0.
                let v = value.ok_or_else(|| ConfigError::IdleTimeout(opt.to_string()))?;
                ext.idle_timeout = v
                    .parse()
                    .map_err(|_| ConfigError::IdleTimeout(opt.to_string()))?;
            }
            _ if parse_ssl_option(&mut ext.ssl, name, value)? => {}
            _ => return Err(ConfigError::Extended(name.to_string())),
        }
    }
    Ok(ext)
}

/// Parses `-a`: an octal mask as memcached reads it (`0700`, `700`, `0o700`), at most 0777.
pub fn parse_unix_mask(s: &str) -> Result<u32, ConfigError> {
    let err = || ConfigError::UnixMask(s.to_string());
    let digits = s.trim();
    let digits = digits.strip_prefix("0o").unwrap_or(digits);
    if digits.is_empty() {
        return Err(err());
    }
    let mask = u32::from_str_radix(digits, 8).map_err(|_| err())?;
    if mask > 0o777 {
        return Err(err());
    }
    Ok(mask)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ext(args: &[&str]) -> Result<Extended, ConfigError> {
        parse_extended(&args.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    #[test]
    fn idle_timeout_is_parsed_and_the_last_wins() {
        assert_eq!(ext(&[]).unwrap().idle_timeout, 0);
        assert_eq!(ext(&["idle_timeout=5"]).unwrap().idle_timeout, 5);
        assert_eq!(
            ext(&["idle_timeout=5", "idle_timeout=7,"]).unwrap(),
            Extended {
                idle_timeout: 7,
                ..Extended::default()
            }
        );
        for bad in ["idle_timeout", "idle_timeout=-1", "idle_timeout=x"] {
            assert!(
                matches!(ext(&[bad]), Err(ConfigError::IdleTimeout(_))),
                "{bad}"
            );
        }
    }

    #[test]
    fn options_without_a_meaning_here_are_refused_by_name() {
        assert_eq!(
            ext(&["idle_timeout=1,slab_reassign"]),
            Err(ConfigError::Extended("slab_reassign".into()))
        );
    }

    #[test]
    fn masks_are_octal() {
        assert_eq!(parse_unix_mask("0700").unwrap(), 0o700);
        assert_eq!(parse_unix_mask("666").unwrap(), 0o666);
        assert_eq!(parse_unix_mask("0o755").unwrap(), 0o755);
        for bad in ["", "8", "0999", "1777", "rwx"] {
            assert!(parse_unix_mask(bad).is_err(), "{bad}");
        }
    }
}
