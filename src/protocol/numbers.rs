//! Numbers on a request line, read exactly as memcached 1.6.45 reads them, so that `+5`,
//! leading zeros or an out-of-range value get memcached's answer rather than a guess.
//!
//! Two families are in use there, and both are here:
//! - mcmc's strict token converters (`mcmc_toktou32`, `mcmc_toktou64`, `mcmc_tokto32`):
//!   the token's bytes only, decimal digits (and a leading `-` for the signed one), a length
//!   cap, overflow refused. 1.6.45 reads every meta flag argument, the data length of
//!   storage commands and the arguments of get/gat, touch, incr/decr, flush_all and
//!   verbosity with them.
//! - C's `strtoul`/`strtol` behind memcached's `safe_*` wrappers: leading whitespace, a sign,
//!   digits, then whitespace or the end; negative unsigned values wrap, and the result is
//!   silently truncated to the 32-bit field. 1.6.45 still reads the client flags and exptime
//!   of the classic storage commands that way (1.6.18 read everything that way).
//!
//! Every function takes one token (never the rest of the line) and returns `None` where
//! memcached reports a failure.

/// `MCMC_TOKTO32_MAX`: longer tokens are refused whatever their digits.
const TOK32_MAX: usize = 11;
/// `MCMC_TOKTO64_MAX`.
const TOK64_MAX: usize = 22;

/// Digits only, accumulated with overflow refused; `None` for a non-digit.
fn digits<T>(t: &[u8], zero: T, step: impl Fn(T, u8) -> Option<T>) -> Option<T> {
    t.iter().try_fold(zero, |sum, &c| {
        if c.is_ascii_digit() {
            step(sum, c - b'0')
        } else {
            None
        }
    })
}

/// `mcmc_toktou32`: at most 11 digits, within `u32`. An empty token is 0, as in mcmc
/// (callers never pass one: tokens and flag arguments are non-empty).
pub fn tok_u32(t: &[u8]) -> Option<u32> {
    if t.len() > TOK32_MAX {
        return None;
    }
    digits(t, 0u32, |s, d| s.checked_mul(10)?.checked_add(u32::from(d)))
}

/// `mcmc_toktou64`: at most 22 digits (leading zeros included), within `u64`.
pub fn tok_u64(t: &[u8]) -> Option<u64> {
    if t.len() > TOK64_MAX {
        return None;
    }
    digits(t, 0u64, |s, d| s.checked_mul(10)?.checked_add(u64::from(d)))
}

/// `mcmc_tokto32`: an optional leading `-`, then digits; at most 11 bytes in all, within
/// `i32`. A lone `-` is 0, as in mcmc.
pub fn tok_i32(t: &[u8]) -> Option<i32> {
    if t.len() > TOK32_MAX {
        return None;
    }
    match t.split_first() {
        Some((b'-', rest)) => digits(rest, 0i32, |s, d| {
            s.checked_mul(10)?.checked_sub(i32::from(d))
        }),
        _ => digits(t, 0i32, |s, d| s.checked_mul(10)?.checked_add(i32::from(d))),
    }
}

/// `safe_strtoul` into a 32-bit field, as classic storage commands read client flags: C's
/// `strtoul` (64-bit `unsigned long`), then truncated to 32 bits.
pub fn strtoul_u32(t: &[u8]) -> Option<u32> {
    strtoull(t).map(|n| n as u32)
}

/// C's `isspace`.
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The common part of `strtol`/`strtoull`: leading whitespace, a sign, decimal digits.
/// Returns (negative, magnitude or `None` on u64 overflow, index after the digits), or
/// `None` when there are no digits. memcached's `safe_*` wrappers then demand that a space
/// (or the end) follows.
fn scan(s: &[u8]) -> Option<(bool, Option<u64>, usize)> {
    let mut i = s.iter().take_while(|&&c| is_space(c)).count();
    let neg = match s.get(i) {
        Some(b'-') => {
            i += 1;
            true
        }
        Some(b'+') => {
            i += 1;
            false
        }
        _ => false,
    };
    let count = s[i..].iter().take_while(|c| c.is_ascii_digit()).count();
    if count == 0 {
        return None;
    }
    let mut n: Option<u64> = Some(0);
    for &c in &s[i..i + count] {
        n = n
            .and_then(|n| n.checked_mul(10))
            .and_then(|n| n.checked_add(u64::from(c - b'0')));
    }
    let end = i + count;
    if s.get(end).is_some_and(|&c| !is_space(c)) {
        return None;
    }
    Some((neg, n, end))
}

/// `safe_strtol`: a C `long`, then silently truncated to the 32-bit destination.
pub fn strtol32(s: &[u8]) -> Option<i32> {
    let (neg, n, _) = scan(s)?;
    let n = n?;
    let v: i64 = if neg {
        if n > 1 << 63 {
            return None;
        }
        0i64.wrapping_sub(n as i64)
    } else {
        i64::try_from(n).ok()?
    };
    Some(v as i32)
}

/// `safe_strtoull` (and `safe_strtoul`, the same on 64-bit): negative numbers wrap, and are
/// refused only when the result looks negative and a '-' was read.
pub fn strtoull(s: &[u8]) -> Option<u64> {
    let (neg, n, end) = scan(s)?;
    let n = n?;
    let v = if neg { 0u64.wrapping_sub(n) } else { n };
    if (v as i64) < 0 && s[..end].contains(&b'-') {
        return None;
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_tokens_follow_mcmc() {
        assert_eq!(tok_u32(b"4294967295"), Some(u32::MAX));
        assert_eq!(tok_u32(b"4294967296"), None, "overflow");
        assert_eq!(tok_u32(b"00000000001"), Some(1), "11 bytes");
        assert_eq!(tok_u32(b"000000000001"), None, "12 bytes");
        assert_eq!(tok_u32(b"+1"), None);
        assert_eq!(tok_u32(b"-1"), None);
        assert_eq!(tok_u64(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(tok_u64(b"18446744073709551616"), None);
        assert_eq!(tok_u64(b"0000000000000000000001"), Some(1), "22 bytes");
        assert_eq!(tok_u64(b"00000000000000000000001"), None, "23 bytes");
        assert_eq!(tok_u64(b"1x"), None);
        assert_eq!(tok_i32(b"-2147483648"), Some(i32::MIN));
        assert_eq!(tok_i32(b"2147483647"), Some(i32::MAX));
        assert_eq!(tok_i32(b"2147483648"), None);
        assert_eq!(tok_i32(b"-2147483649"), None);
        assert_eq!(tok_i32(b"-"), Some(0), "a lone minus is 0 in mcmc");
        assert_eq!(tok_i32(b"+5"), None);
        assert_eq!(tok_i32(b"--5"), None);
        assert_eq!(tok_i32(b"-0000000001"), Some(-1));
        assert_eq!(tok_i32(b"000000000001"), None);
    }

    #[test]
    fn c_numbers_follow_strtol() {
        assert_eq!(strtoul_u32(b"+5"), Some(5));
        assert_eq!(strtoul_u32(b"4294967296"), Some(0), "truncated to 32 bits");
        assert_eq!(strtoul_u32(b"-1"), None);
        assert_eq!(strtoul_u32(b"5\t"), Some(5), "a tab ends the number");
        assert_eq!(strtoul_u32(b"5x"), None);
        assert_eq!(strtol32(b"+5"), Some(5));
        assert_eq!(strtol32(b"4294967296"), Some(0), "truncated to 32 bits");
        assert_eq!(strtol32(b"-1"), Some(-1));
        assert_eq!(strtol32(b" 7"), Some(7), "strtol skips leading space");
        assert_eq!(strtol32(b"\r\n"), None);
        assert_eq!(strtol32(b"2147483648"), Some(i32::MIN));
        assert_eq!(strtol32(b"9223372036854775808"), None);
        assert_eq!(strtol32(b"-9223372036854775808"), Some(0));
        assert_eq!(strtoull(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(strtoull(b"18446744073709551616"), None);
        assert_eq!(strtoull(b"-1"), None);
        assert_eq!(strtoull(b"-0"), Some(0));
        assert_eq!(strtoull(b"-18446744073709551615"), Some(1));
        assert_eq!(strtoull(b"9223372036854775808"), Some(1 << 63));
    }
}
