//! The XML reader for the two request documents S3 clients send (DeleteObjects,
//! CompleteMultipartUpload). Those are flat lists of elements holding text, so a tag scanner
//! suffices; anything it cannot make sense of is an [`XmlError`] (the server answers
//! `MalformedXML`). Writing XML (escaping, the declaration, the namespace) is the server's.

#![cfg_attr(
    not(test),
    deny(
        clippy::indexing_slicing,
        clippy::arithmetic_side_effects,
        clippy::unwrap_used,
        clippy::expect_used
    )
)]

/// Deepest element nesting accepted. S3's request documents nest three deep
/// (`Delete/Object/Key`); the limit keeps the tree (and its recursive drop) shallow.
pub const MAX_DEPTH: usize = 32;

/// Why a request document could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum XmlError {
    /// A construct that is opened but never closed: `"entity"`, `"tag"`, `"comment"`, …
    #[error("unterminated {0}")]
    Unterminated(&'static str),
    /// `&#...;` or `&#x...;` that is not a valid character.
    #[error("bad character reference &{0};")]
    BadCharRef(String),
    /// An entity other than the five predefined ones.
    #[error("unknown entity &{0};")]
    UnknownEntity(String),
    /// An end tag that does not close the open element.
    #[error("unexpected </{0}>")]
    UnexpectedEndTag(String),
    /// A start tag without a name.
    #[error("empty tag name")]
    EmptyTagName,
    /// The document ends in text inside an unclosed element.
    #[error("text outside the root element")]
    TextOutsideRoot,
    /// The document ends with elements still open.
    #[error("unclosed element")]
    Unclosed,
    /// The document has no root element, or more than one.
    #[error("expected one root element")]
    RootCount,
    /// Elements nest deeper than [`MAX_DEPTH`].
    #[error("elements nest deeper than {MAX_DEPTH}")]
    TooDeep,
}

fn unescape(s: &str) -> Result<String, XmlError> {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some((before, after)) = rest.split_once('&') {
        out.push_str(before);
        let (ent, after) = after
            .split_once(';')
            .ok_or(XmlError::Unterminated("entity"))?;
        let c = match ent {
            "amp" => '&',
            "lt" => '<',
            "gt" => '>',
            "quot" => '"',
            "apos" => '\'',
            e => {
                let code = if let Some(h) = e.strip_prefix("#x").or_else(|| e.strip_prefix("#X")) {
                    u32::from_str_radix(h, 16).ok()
                } else if let Some(d) = e.strip_prefix('#') {
                    d.parse::<u32>().ok()
                } else {
                    return Err(XmlError::UnknownEntity(e.to_owned()));
                };
                code.and_then(char::from_u32)
                    .ok_or_else(|| XmlError::BadCharRef(e.to_owned()))?
            }
        };
        out.push(c);
        rest = after;
    }
    out.push_str(rest);
    Ok(out)
}

/// One element of a flat document: its name, and either its text or its children.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
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

/// Parses a document into its root element (skipping declarations and comments; CDATA is
/// text). Attributes and namespace prefixes are dropped.
pub fn parse(doc: &str) -> Result<Elem, XmlError> {
    // The bottom of the stack is a pseudo-element holding the root as its child.
    let mut top = Elem::default();
    let mut stack: Vec<Elem> = Vec::new();
    let mut rest = doc;
    loop {
        let Some((text, after)) = rest.split_once('<') else {
            if !rest.trim().is_empty() && !stack.is_empty() {
                return Err(XmlError::TextOutsideRoot);
            }
            break;
        };
        // Text outside the root element (a byte-order mark, stray whitespace) is ignored.
        if let Some(cur) = stack.last_mut() {
            if !text.is_empty() {
                cur.text.push_str(&unescape(text)?);
            }
        }
        if let Some(r) = after.strip_prefix('?') {
            rest = r
                .split_once("?>")
                .ok_or(XmlError::Unterminated("declaration"))?
                .1;
        } else if let Some(r) = after.strip_prefix("!--") {
            rest = r
                .split_once("-->")
                .ok_or(XmlError::Unterminated("comment"))?
                .1;
        } else if let Some(r) = after.strip_prefix("![CDATA[") {
            let (data, r) = r.split_once("]]>").ok_or(XmlError::Unterminated("CDATA"))?;
            if let Some(cur) = stack.last_mut() {
                cur.text.push_str(data);
            }
            rest = r;
        } else if let Some(r) = after.strip_prefix('/') {
            let (tag, r) = r.split_once('>').ok_or(XmlError::Unterminated("end tag"))?;
            let name = local_name(tag.trim());
            let done = stack
                .pop()
                .filter(|e| e.name == name && !name.is_empty())
                .ok_or_else(|| XmlError::UnexpectedEndTag(name.to_owned()))?;
            stack.last_mut().unwrap_or(&mut top).children.push(done);
            rest = r;
        } else {
            let (inner, r) = after.split_once('>').ok_or(XmlError::Unterminated("tag"))?;
            let (inner, empty) = match inner.strip_suffix('/') {
                Some(i) => (i, true),
                None => (inner, false),
            };
            let name = local_name(inner.split_whitespace().next().unwrap_or(""));
            if name.is_empty() {
                return Err(XmlError::EmptyTagName);
            }
            let e = Elem {
                name: name.to_owned(),
                ..Default::default()
            };
            if empty {
                stack.last_mut().unwrap_or(&mut top).children.push(e);
            } else {
                if stack.len() >= MAX_DEPTH {
                    return Err(XmlError::TooDeep);
                }
                stack.push(e);
            }
            rest = r;
        }
    }
    if !stack.is_empty() {
        return Err(XmlError::Unclosed);
    }
    match top.children.pop() {
        Some(root) if top.children.is_empty() => Ok(root),
        _ => Err(XmlError::RootCount),
    }
}

/// `s3:Key` -> `Key`.
fn local_name(n: &str) -> &str {
    n.rsplit(':').next().unwrap_or(n)
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
}
