//! The little XML the S3 API needs: escaping for the answers we write, and a reader for
//! the two request documents clients send (DeleteObjects, CompleteMultipartUpload).
//! Those are flat lists of elements holding text, so a tag scanner suffices; anything it
//! cannot make sense of is `MalformedXML`.

use std::fmt::Write;

use super::error::S3Error;

pub const DECL: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n";
pub const NS: &str = "http://s3.amazonaws.com/doc/2006-03-01/";

/// Escapes text for element content and attribute values.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            // Control characters are not allowed in XML 1.0 text: write them as references
            // the way S3 does (clients that can't read them ask for encoding-type=url).
            c if (c as u32) < 0x20 && !matches!(c, '\t' | '\n' | '\r') => {
                let _ = write!(out, "&#x{:X};", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> Result<String, S3Error> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('&') {
        out.push_str(&rest[..i]);
        let end = rest[i..]
            .find(';')
            .ok_or_else(|| S3Error::malformed_xml("unterminated entity"))?;
        let ent = &rest[i + 1..i + end];
        let c = match ent {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e if e.starts_with("#x") || e.starts_with("#X") => u32::from_str_radix(&e[2..], 16)
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| S3Error::malformed_xml(format!("bad character reference &{e};")))?,
            e if e.starts_with('#') => e[1..]
                .parse::<u32>()
                .ok()
                .and_then(char::from_u32)
                .ok_or_else(|| S3Error::malformed_xml(format!("bad character reference &{e};")))?,
            e => return Err(S3Error::malformed_xml(format!("unknown entity &{e};"))),
        };
        out.push(c);
        rest = &rest[i + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

/// One element of a flat document: its name, and either its text or its children.
#[derive(Debug, Default)]
pub struct Elem {
    pub name: String,
    pub text: String,
    pub children: Vec<Elem>,
}

impl Elem {
    pub fn child(&self, name: &str) -> Option<&Elem> {
        self.children.iter().find(|c| c.name == name)
    }

    pub fn child_text(&self, name: &str) -> Option<&str> {
        self.child(name).map(|c| c.text.as_str())
    }
}

/// Parses a document into its root element (comments, declarations and CDATA-free text).
pub fn parse(doc: &str) -> Result<Elem, S3Error> {
    let mut stack: Vec<Elem> = vec![Elem::default()];
    let mut rest = doc;
    loop {
        let Some(lt) = rest.find('<') else {
            if !rest.trim().is_empty() && stack.len() > 1 {
                return Err(S3Error::malformed_xml("text outside the root element"));
            }
            break;
        };
        let text = &rest[..lt];
        if stack.len() > 1 && !text.is_empty() {
            let cur = stack.last_mut().expect("non-empty stack");
            cur.text.push_str(&unescape(text)?);
        }
        rest = &rest[lt..];
        if let Some(r) = rest.strip_prefix("<?") {
            let end = r
                .find("?>")
                .ok_or_else(|| S3Error::malformed_xml("unterminated declaration"))?;
            rest = &r[end + 2..];
        } else if let Some(r) = rest.strip_prefix("<!--") {
            let end = r
                .find("-->")
                .ok_or_else(|| S3Error::malformed_xml("unterminated comment"))?;
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("<![CDATA[") {
            let end = r
                .find("]]>")
                .ok_or_else(|| S3Error::malformed_xml("unterminated CDATA"))?;
            if let Some(cur) = stack.last_mut() {
                cur.text.push_str(&r[..end]);
            }
            rest = &r[end + 3..];
        } else if let Some(r) = rest.strip_prefix("</") {
            let end = r
                .find('>')
                .ok_or_else(|| S3Error::malformed_xml("unterminated end tag"))?;
            let name = local_name(r[..end].trim());
            let done = stack
                .pop()
                .filter(|e| e.name == name && !name.is_empty())
                .ok_or_else(|| S3Error::malformed_xml(format!("unexpected </{name}>")))?;
            stack
                .last_mut()
                .ok_or_else(|| S3Error::malformed_xml("unbalanced document"))?
                .children
                .push(done);
            rest = &r[end + 1..];
        } else {
            let r = &rest[1..];
            let end = r
                .find('>')
                .ok_or_else(|| S3Error::malformed_xml("unterminated tag"))?;
            let inner = &r[..end];
            let (inner, empty) = match inner.strip_suffix('/') {
                Some(i) => (i, true),
                None => (inner, false),
            };
            let name = local_name(inner.split_whitespace().next().unwrap_or(""));
            if name.is_empty() {
                return Err(S3Error::malformed_xml("empty tag name"));
            }
            let e = Elem {
                name: name.to_owned(),
                ..Default::default()
            };
            if empty {
                stack.last_mut().expect("non-empty stack").children.push(e);
            } else {
                stack.push(e);
            }
            rest = &r[end + 1..];
        }
    }
    if stack.len() != 1 {
        return Err(S3Error::malformed_xml("unclosed element"));
    }
    let mut top = stack.pop().expect("document");
    if top.children.len() != 1 {
        return Err(S3Error::malformed_xml("expected one root element"));
    }
    Ok(top.children.pop().expect("one root"))
}

/// `s3:Key` -> `Key`.
fn local_name(n: &str) -> &str {
    n.rsplit(':').next().unwrap_or(n)
}

/// Percent-encodes a key for `encoding-type=url` (as S3: everything but unreserved
/// characters and '/').
pub fn url_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/') {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// ISO 8601 with milliseconds, as S3's listings write times.
pub fn iso_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_delete_and_complete_documents() {
        let doc = r#"<?xml version="1.0" encoding="UTF-8"?>
<Delete xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><Quiet>true</Quiet>
<Object><Key>a &amp; b</Key></Object><Object><Key>c&#x1;</Key><VersionId>v</VersionId></Object></Delete>"#;
        let root = parse(doc).unwrap();
        assert_eq!(root.name, "Delete");
        assert_eq!(root.child_text("Quiet"), Some("true"));
        let keys: Vec<_> = root
            .children
            .iter()
            .filter(|c| c.name == "Object")
            .map(|c| c.child_text("Key").unwrap().to_owned())
            .collect();
        assert_eq!(keys, ["a & b", "c\u{1}"]);
        assert!(parse("<a><b></a>").is_err());
        assert!(parse("<a>").is_err());
        assert!(parse("").is_err());
        let root = parse("<CompleteMultipartUpload><Part><PartNumber>1</PartNumber><ETag>\"x\"</ETag></Part></CompleteMultipartUpload>").unwrap();
        assert_eq!(root.children[0].child_text("ETag"), Some("\"x\""));
    }

    #[test]
    fn escapes_and_formats() {
        assert_eq!(escape("a<&>\"'\u{1}"), "a&lt;&amp;&gt;&quot;&apos;&#x1;");
        assert_eq!(url_encode("a b/c+d"), "a%20b/c%2Bd");
        assert_eq!(iso_time(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(iso_time(1_700_000_000_123), "2023-11-14T22:13:20.123Z");
    }
}
