//! Splitting a URL query into its raw `name=value` parameters. A presigned URL's query is
//! several hundred bytes and every request scans it, so the splits use `memchr`'s vector
//! search instead of `str::split`'s byte loop.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used
    )
)]

/// The raw (not decoded) `(name, value)` pairs of `q`, in order, as `q.split('&')`
/// gives them: empty parameters are skipped; a parameter without `=` has an empty value.
pub fn raw_pairs(q: &str) -> RawPairs<'_> {
    RawPairs { rest: q }
}

/// See [`raw_pairs`].
pub struct RawPairs<'a> {
    rest: &'a str,
}

impl<'a> Iterator for RawPairs<'a> {
    type Item = (&'a str, &'a str);

    fn next(&mut self) -> Option<Self::Item> {
        while !self.rest.is_empty() {
            let (param, rest) = cut(self.rest, memchr::memchr(b'&', self.rest.as_bytes()));
            self.rest = rest;
            if !param.is_empty() {
                return Some(split_param(param));
            }
        }
        None
    }
}

/// The raw value of the last parameter of `q` whose raw name is `name`. Searches from the
/// end: SDKs put a presigned URL's `X-Amz-Signature` last.
pub fn last_raw_value<'a>(q: &'a str, name: &str) -> Option<&'a str> {
    let mut rest = q;
    while !rest.is_empty() {
        let (head, param) = match memchr::memrchr(b'&', rest.as_bytes()) {
            Some(i) => cut(rest, Some(i)),
            None => ("", rest),
        };
        rest = head;
        let (k, v) = split_param(param);
        if k == name && !param.is_empty() {
            return Some(v);
        }
    }
    None
}

/// `s.split(sep as char)` for an ASCII `sep`, with vector search: every piece, empty
/// ones too.
pub fn split_byte(s: &str, sep: u8) -> SplitByte<'_> {
    SplitByte { rest: Some(s), sep }
}

/// See [`split_byte`].
pub struct SplitByte<'a> {
    /// `None` once the last piece was given.
    rest: Option<&'a str>,
    sep: u8,
}

impl<'a> Iterator for SplitByte<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let rest = self.rest?;
        match memchr::memchr(self.sep, rest.as_bytes()) {
            Some(i) => {
                let (piece, tail) = cut(rest, Some(i));
                self.rest = Some(tail);
                Some(piece)
            }
            None => {
                self.rest = None;
                Some(rest)
            }
        }
    }
}

/// Whether a raw name or value has escapes (`%XX`, or `+` for a space) to decode.
pub fn has_escapes(s: &str) -> bool {
    memchr::memchr2(b'%', b'+', s.as_bytes()).is_some()
}

fn split_param(p: &str) -> (&str, &str) {
    match memchr::memchr(b'=', p.as_bytes()) {
        Some(i) => cut(p, Some(i)),
        None => (p, ""),
    }
}

/// `s` before and after the ASCII byte at `at` (all of `s`, and nothing, without one).
pub(crate) fn cut(s: &str, at: Option<usize>) -> (&str, &str) {
    let Some((head, tail)) = at.and_then(|i| s.split_at_checked(i)) else {
        return (s, "");
    };
    // The byte at `at` is ASCII, so one byte further is a char boundary.
    (head, tail.get(1..).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_pairs_split_as_str_split_does() {
        let cases = [
            "",
            "&",
            "a",
            "a=",
            "=b",
            "a=1&b=2",
            "a=1&&b=2&",
            "&a=1=2&b",
            "X-Amz-Signature=ab%20&uploads&partNumber=3",
            "é=ü&ß",
        ];
        for q in cases {
            let ours: Vec<_> = raw_pairs(q).collect();
            let std: Vec<_> = q
                .split('&')
                .filter(|p| !p.is_empty())
                .map(|p| p.split_once('=').unwrap_or((p, "")))
                .collect();
            assert_eq!(ours, std, "query {q:?}");
            for (k, _) in &std {
                let last = std.iter().rev().find(|(n, _)| n == k).map(|(_, v)| *v);
                assert_eq!(last_raw_value(q, k), last, "last {k:?} of {q:?}");
            }
            assert_eq!(last_raw_value(q, "absent"), None);
        }
    }

    #[test]
    fn split_byte_splits_as_str_split_does() {
        for s in ["", ",", "a", "a,", ",a", "a,,b", " a , b ,c", "é,ü"] {
            let ours: Vec<_> = split_byte(s, b',').collect();
            let std: Vec<_> = s.split(',').collect();
            assert_eq!(ours, std, "{s:?}");
        }
    }

    #[test]
    fn escapes_are_found() {
        assert!(has_escapes("a%20b"));
        assert!(has_escapes("a+b"));
        assert!(!has_escapes("X-Amz-Algorithm"));
    }
}
