//! Tests: AWS's published SigV4 examples for S3, signatures made independently by the
//! `aws-sigv4` crate, aws-chunked decoding under every split of the input, and each failure.

use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{
    sign, PayloadChecksumKind, PercentEncodingMode, SignableBody, SignableRequest,
    SignatureLocation, SigningSettings, UriPathNormalizationMode,
};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;
use base64::Engine as _;
use bytes::Bytes;
use hmac::{KeyInit, Mac};
use md5::Digest as _;
use sha2::Digest as _;

use super::*;

const AK: &str = "AKIAIOSFODNN7EXAMPLE";
const SK: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";
const DATE: &str = "20130524T000000Z";
const SCOPE: &str = "20130524/us-east-1/s3/aws4_request";

fn keys() -> KeyStore {
    KeyStore::new(vec![
        Credential {
            access_key: AK.into(),
            secret_key: SK.into(),
            buckets: vec!["examplebucket".into()],
            read_only: false,
        },
        Credential {
            access_key: "OTHERKEY".into(),
            secret_key: "other secret".into(),
            buckets: vec![],
            read_only: true,
        },
    ])
}

fn t2013() -> SystemTime {
    parse_amz_date(DATE).unwrap()
}

fn parts(method: &str, uri: &str, headers: &[(&str, &str)]) -> http::request::Parts {
    let mut b = http::Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(()).unwrap().into_parts().0
}

fn auth(signed: &str, sig: &str) -> String {
    format!("AWS4-HMAC-SHA256 Credential={AK}/{SCOPE}, SignedHeaders={signed}, Signature={sig}")
}

fn code(r: Result<impl std::fmt::Debug, AuthError>) -> &'static str {
    r.expect_err("expected an error").code()
}

fn hmac_hex(key: &[u8], msg: &str) -> (String, [u8; 32]) {
    let mut m = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).unwrap();
    m.update(msg.as_bytes());
    let out: [u8; 32] = m.finalize().into_bytes().into();
    (hex::encode(out), out)
}

/// Signing key computed here, independently of the module's helper.
fn test_signing_key(secret: &str, date: &str) -> [u8; 32] {
    let (_, k) = hmac_hex(format!("AWS4{secret}").as_bytes(), date);
    let (_, k) = hmac_hex(&k, "us-east-1");
    let (_, k) = hmac_hex(&k, "s3");
    hmac_hex(&k, "aws4_request").1
}

fn sha_hex(d: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(d))
}

/// The AWS documentation's signed GetObject example (a range of /test.txt).
fn doc_get_object() -> http::request::Parts {
    parts(
        "GET",
        "/test.txt",
        &[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", DATE),
            (
                "authorization",
                &auth(
                    "host;range;x-amz-content-sha256;x-amz-date",
                    "f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41",
                ),
            ),
        ],
    )
}

// ---------------------------------------------------------------------------------------------
// AWS documentation examples (S3 API reference, SigV4 "Examples: Signature Calculations")

#[test]
fn aws_doc_get_object() {
    let p = doc_get_object();
    let v = verify_head(&p, &keys(), t2013()).unwrap();
    assert_eq!(v.access_key, AK);
    assert_eq!(v.region, "us-east-1");
    assert!(!v.presigned);
    assert!(matches!(v.body, BodyCheck::Sha256(ref h) if h == EMPTY_SHA256));

    // Changing the range (a signed header) or the signature breaks it.
    let mut bad = p.clone();
    bad.headers.insert("range", "bytes=0-10".parse().unwrap());
    assert_eq!(
        code(verify_head(&bad, &keys(), t2013())),
        "SignatureDoesNotMatch"
    );
}

#[test]
fn aws_doc_put_object_encodes_dollar() {
    let body = b"Welcome to Amazon S3.";
    let hash = "44ce7dd67c959e0d3524ffac1771dfbba87d2b6b4b4e99e42034a8b803f8b072";
    assert_eq!(sha_hex(body), hash);
    let signed = "date;host;x-amz-content-sha256;x-amz-date;x-amz-storage-class";
    let sig = "98ad721746da40c64f1a55b78f14c238d841ea1380cd77a1b5971af0ece108bd";
    // The doc's request line is `PUT test$file.text`; its canonical URI is /test%24file.text.
    for path in ["/test$file.text", "/test%24file.text"] {
        let p = parts(
            "PUT",
            path,
            &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("date", "Fri, 24 May 2013 00:00:00 GMT"),
                ("x-amz-content-sha256", hash),
                ("x-amz-date", DATE),
                ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
                ("authorization", &auth(signed, sig)),
            ],
        );
        let v = verify_head(&p, &keys(), t2013()).unwrap();
        let mut d = BodyDecoder::new(v.body, Some(body.len() as u64));
        assert_eq!(d.feed(Bytes::from_static(body)).unwrap().concat(), body);
        d.finish().unwrap();
    }
}

#[test]
fn aws_doc_bucket_queries() {
    for (uri, sig) in [
        (
            "/?lifecycle",
            "fea454ca298b7da1c68078a5d1bdbfbbe0d65c699e0f91ac7a200a0136783543",
        ),
        (
            "/?max-keys=2&prefix=J",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
        // Order of parameters does not matter.
        (
            "/?prefix=J&max-keys=2",
            "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
        ),
    ] {
        let p = parts(
            "GET",
            uri,
            &[
                ("host", "examplebucket.s3.amazonaws.com"),
                ("x-amz-content-sha256", EMPTY_SHA256),
                ("x-amz-date", DATE),
                (
                    "authorization",
                    &auth("host;x-amz-content-sha256;x-amz-date", sig),
                ),
            ],
        );
        verify_head(&p, &keys(), t2013()).unwrap_or_else(|e| panic!("{uri}: {e}"));
    }
    let p = parts(
        "GET",
        "/?max-keys=3&prefix=J",
        &[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", DATE),
            (
                "authorization",
                &auth(
                    "host;x-amz-content-sha256;x-amz-date",
                    "34b48302e7b5fa45bde8084f4b7868a86f0a534bc59db6670ed5711ef69dc6f7",
                ),
            ),
        ],
    );
    assert_eq!(
        code(verify_head(&p, &keys(), t2013())),
        "SignatureDoesNotMatch"
    );
}

const DOC_PRESIGNED: &str = "/test.txt?X-Amz-Algorithm=AWS4-HMAC-SHA256\
    &X-Amz-Credential=AKIAIOSFODNN7EXAMPLE%2F20130524%2Fus-east-1%2Fs3%2Faws4_request\
    &X-Amz-Date=20130524T000000Z&X-Amz-Expires=86400&X-Amz-SignedHeaders=host\
    &X-Amz-Signature=aeeed9bbccd4d02ee5c0109b86d86835f995330da4c265957d157751f604d404";

#[test]
fn aws_doc_presigned_url() {
    let p = parts(
        "GET",
        DOC_PRESIGNED,
        &[("host", "examplebucket.s3.amazonaws.com")],
    );
    let v = verify_head(&p, &keys(), t2013() + Duration::from_secs(3600)).unwrap();
    assert!(v.presigned);
    assert!(matches!(v.body, BodyCheck::None));
    // Valid up to the last second, expired after it.
    verify_head(&p, &keys(), t2013() + Duration::from_secs(86400)).unwrap();
    let e = verify_head(&p, &keys(), t2013() + Duration::from_secs(86401)).unwrap_err();
    assert_eq!(e, AuthError::AccessDenied("Request has expired".into()));
    assert_eq!(e.status(), http::StatusCode::FORBIDDEN);
    // Signed in the future beyond the skew allowance.
    let e = verify_head(&p, &keys(), t2013() - Duration::from_secs(16 * 60)).unwrap_err();
    assert_eq!(e.code(), "RequestTimeTooSkewed");
    // Within 15 minutes early is fine.
    verify_head(&p, &keys(), t2013() - Duration::from_secs(14 * 60)).unwrap();
    // Tampered query.
    let tampered = DOC_PRESIGNED.replace("Expires=86400", "Expires=86399");
    let p = parts(
        "GET",
        &tampered,
        &[("host", "examplebucket.s3.amazonaws.com")],
    );
    assert_eq!(
        code(verify_head(&p, &keys(), t2013())),
        "SignatureDoesNotMatch"
    );
    let extra = format!("{DOC_PRESIGNED}&versionId=1");
    let p = parts("GET", &extra, &[("host", "examplebucket.s3.amazonaws.com")]);
    assert_eq!(
        code(verify_head(&p, &keys(), t2013())),
        "SignatureDoesNotMatch"
    );
    // Another host.
    let p = parts("GET", DOC_PRESIGNED, &[("host", "other.s3.amazonaws.com")]);
    assert_eq!(
        code(verify_head(&p, &keys(), t2013())),
        "SignatureDoesNotMatch"
    );
}

fn doc_chunk_body(sigs: [&str; 3]) -> Vec<u8> {
    let mut b = Vec::new();
    b.extend_from_slice(format!("10000;chunk-signature={}\r\n", sigs[0]).as_bytes());
    b.extend_from_slice(&[b'a'; 65536]);
    b.extend_from_slice(format!("\r\n400;chunk-signature={}\r\n", sigs[1]).as_bytes());
    b.extend_from_slice(&[b'a'; 1024]);
    b.extend_from_slice(format!("\r\n0;chunk-signature={}\r\n", sigs[2]).as_bytes());
    b
}

const DOC_CHUNK_SIGS: [&str; 3] = [
    "ad80c730a21e5b8d04586a2213dd63b9a0e99e0e2307b0ade35a65485a288648",
    "0055627c9e194cb4542bae2aa5492e3c1575bbb81b612b7d234b86a503ef5497",
    "b6c6ea8a5354eaf15b3cb7646744f4275b71ea724fed81ceb9323e279d449df9",
];

fn doc_streaming_head() -> Verified {
    let p = parts(
        "PUT",
        "/examplebucket/chunkObject.txt",
        &[
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", DATE),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", STREAMING_PAYLOAD),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("content-length", "66824"),
            (
                "authorization",
                &auth(
                    "content-encoding;content-length;host;x-amz-content-sha256;x-amz-date;\
                     x-amz-decoded-content-length;x-amz-storage-class",
                    "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9",
                ),
            ),
        ],
    );
    verify_head(&p, &keys(), t2013()).unwrap()
}

fn decode_all(check: BodyCheck, len: Option<u64>, pieces: &[&[u8]]) -> Result<Vec<u8>, AuthError> {
    let mut d = BodyDecoder::new(check, len);
    let mut out = Vec::new();
    for p in pieces {
        for b in d.feed(Bytes::copy_from_slice(p))? {
            out.extend_from_slice(&b);
        }
    }
    d.finish()?;
    Ok(out)
}

#[test]
fn aws_doc_chunked_upload() {
    let v = doc_streaming_head();
    assert!(v.body.is_chunked());
    let mut body = doc_chunk_body(DOC_CHUNK_SIGS);
    body.extend_from_slice(b"\r\n");
    assert_eq!(body.len(), 66824, "the doc's Content-Length");

    let out = decode_all(v.body.clone(), Some(66560), &[&body]).unwrap();
    assert_eq!(out, vec![b'a'; 66560]);

    // Split at a few awkward places (inside the header, inside data, between CR and LF).
    for cut in [
        1, 7, 85, 86, 87, 100, 65_623, 65_624, 65_625, 66_000, 66_822, 66_823,
    ] {
        let out = decode_all(v.body.clone(), Some(66560), &[&body[..cut], &body[cut..]]);
        assert_eq!(out.unwrap().len(), 66560, "cut at {cut}");
    }
    // One byte at a time.
    let pieces: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(
        decode_all(v.body.clone(), Some(66560), &pieces)
            .unwrap()
            .len(),
        66560
    );

    // Data is released only once its chunk's signature checked out.
    let mut d = BodyDecoder::new(v.body.clone(), Some(66560));
    assert!(d
        .feed(Bytes::copy_from_slice(&body[..60_000]))
        .unwrap()
        .is_empty());
    assert_eq!(d.decoded_len(), 0);

    // Any one tampered signature, or tampered data, fails.
    for i in 0..3 {
        let mut sigs = DOC_CHUNK_SIGS;
        let bad = sigs[i].replace('a', "b");
        sigs[i] = &bad;
        let mut b = doc_chunk_body(sigs);
        b.extend_from_slice(b"\r\n");
        let e = decode_all(v.body.clone(), Some(66560), &[&b]).unwrap_err();
        assert_eq!(e.code(), "SignatureDoesNotMatch", "chunk {i}");
    }
    let mut b = body.clone();
    b[90] = b'b';
    assert_eq!(
        code(decode_all(v.body.clone(), Some(66560), &[&b])),
        "SignatureDoesNotMatch"
    );
    // Wrong decoded length.
    assert_eq!(
        code(decode_all(v.body.clone(), Some(66561), &[&body])),
        "IncompleteBody"
    );
    assert_eq!(
        code(decode_all(v.body.clone(), Some(1000), &[&body])),
        "IncompleteBody"
    );
    // Truncated.
    assert_eq!(
        code(decode_all(v.body, Some(66560), &[&body[..66_000]])),
        "IncompleteBody"
    );
}

#[test]
fn aws_doc_chunked_upload_with_trailer() {
    let p = parts(
        "PUT",
        "/examplebucket/chunkObject.txt",
        &[
            ("host", "s3.amazonaws.com"),
            ("x-amz-date", DATE),
            ("x-amz-storage-class", "REDUCED_REDUNDANCY"),
            ("x-amz-content-sha256", STREAMING_PAYLOAD_TRAILER),
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "66560"),
            ("x-amz-trailer", "x-amz-checksum-crc32c"),
            (
                "authorization",
                &auth(
                    "content-encoding;host;x-amz-content-sha256;x-amz-date;\
                     x-amz-decoded-content-length;x-amz-storage-class;x-amz-trailer",
                    "106e2a8a18243abcf37539882f36619c00e2dfc72633413f02d3b74544bfeb8e",
                ),
            ),
        ],
    );
    let v = verify_head(&p, &keys(), t2013()).unwrap();
    assert_eq!(v.trailer, Some(ChecksumAlgorithm::Crc32c));
    let body_with = |crc: &str, sig: &str| {
        let mut b = doc_chunk_body([
            "b474d8862b1487a5145d686f57f013e54db672cee1c953b3010fb58501ef5aa2",
            "1c1344b170168f8e65b41376b44b20fe354e373826ccbbe2c1d40a8cae51e5c7",
            "2ca2aba2005185cf7159c6277faf83795951dd77a3a99e6e65d5c9f85863f992",
        ]);
        b.extend_from_slice(
            format!("x-amz-checksum-crc32c:{crc}\r\nx-amz-trailer-signature:{sig}\r\n\r\n")
                .as_bytes(),
        );
        b
    };
    let good_sig = "d81f82fc3505edab99d459891051a732e8730629a2e4a59689829ca17fe2e435";
    let body = body_with("sOO8/Q==", good_sig);
    let mut d = BodyDecoder::new(v.body.clone(), Some(66560));
    let out: Vec<u8> = d.feed(Bytes::from(body.clone())).unwrap().concat();
    assert_eq!(out, vec![b'a'; 66560]);
    assert_eq!(
        d.finish_checksum().unwrap(),
        Some((ChecksumAlgorithm::Crc32c, "sOO8/Q==".to_owned()))
    );
    for cut in [66_700, body.len() - 3, body.len() - 1] {
        decode_all(v.body.clone(), Some(66560), &[&body[..cut], &body[cut..]]).unwrap();
    }
    // A wrong trailer signature; a checksum that is changed (the signature covers it).
    let bad = body_with("sOO8/Q==", &good_sig.replace('d', "e"));
    assert_eq!(
        code(decode_all(v.body.clone(), Some(66560), &[&bad])),
        "SignatureDoesNotMatch"
    );
    let bad = body_with("AAAAAA==", good_sig);
    assert_eq!(
        code(decode_all(v.body.clone(), Some(66560), &[&bad])),
        "SignatureDoesNotMatch"
    );
    // Trailer section cut off: the trailer signature is missing.
    let trailer_at = body
        .windows(14)
        .position(|w| w == b"x-amz-checksum")
        .unwrap();
    assert_eq!(
        code(decode_all(v.body, Some(66560), &[&body[..trailer_at]])),
        "SignatureDoesNotMatch"
    );
}

// ---------------------------------------------------------------------------------------------
// Signatures made by the aws-sigv4 crate

fn settings(presign: Option<Duration>) -> SigningSettings {
    let mut s = SigningSettings::default();
    s.percent_encoding_mode = PercentEncodingMode::Single;
    s.uri_path_normalization_mode = UriPathNormalizationMode::Disabled;
    match presign {
        None => s.payload_checksum_kind = PayloadChecksumKind::XAmzSha256,
        Some(d) => {
            s.signature_location = SignatureLocation::QueryParams;
            s.expires_in = Some(d);
        }
    }
    s
}

/// Signs a request with aws-sigv4 and returns its head as the server would see it.
fn sdk_sign(
    method: &str,
    url: &str,
    headers: &[(&str, &str)],
    body: SignableBody<'_>,
    secret: &str,
    time: SystemTime,
    presign: Option<Duration>,
) -> http::request::Parts {
    let identity: Identity = Credentials::new(AK, secret, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("eu-central-1")
        .name("s3")
        .time(time)
        .settings(settings(presign))
        .build()
        .unwrap()
        .into();
    let signable =
        SignableRequest::new(method, url, headers.iter().copied(), body).expect("signable");
    let (instructions, _) = sign(signable, &params).unwrap().into_parts();
    let mut b = http::Request::builder().method(method).uri(url);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(()).unwrap();
    instructions.apply_to_request_http1x(&mut req);
    req.into_parts().0
}

/// A key as the SDKs put it in the path: every byte but unreserved and `/` percent-encoded.
fn encode_key(key: &str) -> String {
    const SET: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~')
        .remove(b'/');
    percent_encoding::utf8_percent_encode(key, SET).to_string()
}

const KEYS: &[&str] = &[
    "plain.txt",
    "dir/sub dir/file with spaces.txt",
    "plus+equals=amp&q?hash#.bin",
    "ünïcødé/日本語/😀",
    "quote'paren(star)*bang!comma,semi;colon:at@dollar$",
    "percent%25literal%2Fslash",
    "trailing/",
    "tilde~under_dash-dot.",
];

#[test]
fn sdk_header_auth_various_keys_and_queries() {
    let now = SystemTime::now();
    for key in KEYS {
        for query in [
            "",
            "?uploads",
            "?partNumber=1&uploadId=abc%2Bdef%3D%3D",
            "?list-type=2&prefix=a%20b%2Bc&delimiter=%2F&start-after=%C3%BC&empty=",
            "?x=1&x=0&a=z",
        ] {
            let url = format!("http://127.0.0.1:9000/bucket/{}{query}", encode_key(key));
            let body = b"hello world";
            let p = sdk_sign(
                "PUT",
                &url,
                &[
                    ("host", "127.0.0.1:9000"),
                    ("x-amz-meta-note", "  spaced   out  value "),
                    ("content-type", "text/plain"),
                ],
                SignableBody::Bytes(body),
                SK,
                now,
                None,
            );
            let v = verify_head(&p, &keys(), now)
                .unwrap_or_else(|e| panic!("key {key:?} query {query:?}: {e}"));
            assert_eq!(v.region, "eu-central-1");
            let out = decode_all(v.body, Some(body.len() as u64), &[body]).unwrap();
            assert_eq!(out, body);
        }
    }
}

#[test]
fn sdk_host_from_authority_and_unsigned_payload() {
    let now = SystemTime::now();
    // No Host header (as with HTTP/2): the URI authority is what was signed.
    let p = sdk_sign(
        "GET",
        "https://bucket.s3.example.com/key",
        &[],
        SignableBody::UnsignedPayload,
        SK,
        now,
        None,
    );
    assert!(p.headers.get("host").is_none());
    let v = verify_head(&p, &keys(), now).unwrap();
    assert!(matches!(v.body, BodyCheck::None));
}

#[test]
fn sdk_presigned_urls() {
    let now = SystemTime::now();
    for key in KEYS {
        let url = format!(
            "http://localhost:9000/bucket/{}?response-content-disposition=attachment%3B%20filename%3D%22a%20b.txt%22&versionId=v%2B1",
            encode_key(key)
        );
        let p = sdk_sign(
            "GET",
            &url,
            &[("host", "localhost:9000")],
            SignableBody::UnsignedPayload,
            SK,
            now,
            Some(Duration::from_secs(600)),
        );
        assert!(p.uri.query().unwrap().contains("X-Amz-Signature="));
        let v = verify_head(&p, &keys(), now + Duration::from_secs(599))
            .unwrap_or_else(|e| panic!("key {key:?}: {e}"));
        assert!(v.presigned);
        assert_eq!(v.access_key, AK);
        let e = verify_head(&p, &keys(), now + Duration::from_secs(601)).unwrap_err();
        assert_eq!(e, AuthError::AccessDenied("Request has expired".into()));

        // Tampered query value and path.
        let q = p
            .uri
            .query()
            .unwrap()
            .replace("versionId=v%2B1", "versionId=v%2B2");
        let mut bad = p.clone();
        bad.uri = format!("{}?{q}", p.uri.path()).parse().unwrap();
        assert_eq!(
            code(verify_head(&bad, &keys(), now)),
            "SignatureDoesNotMatch"
        );
        let mut bad = p.clone();
        bad.uri = format!("/bucket/other?{}", p.uri.query().unwrap())
            .parse()
            .unwrap();
        assert_eq!(
            code(verify_head(&bad, &keys(), now)),
            "SignatureDoesNotMatch"
        );
    }
}

#[test]
fn sdk_failures() {
    let now = SystemTime::now();
    let sign_at = |secret: &str, t: SystemTime| {
        sdk_sign(
            "PUT",
            "http://localhost/bucket/obj",
            &[("host", "localhost"), ("x-amz-meta-a", "1")],
            SignableBody::Bytes(b"x"),
            secret,
            t,
            None,
        )
    };
    let good = sign_at(SK, now);
    verify_head(&good, &keys(), now).unwrap();

    // Wrong secret.
    assert_eq!(
        code(verify_head(&sign_at("not the secret", now), &keys(), now)),
        "SignatureDoesNotMatch"
    );
    // Unknown access key.
    let other = KeyStore::new(vec![]);
    let e = verify_head(&good, &other, now).unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        ("InvalidAccessKeyId", http::StatusCode::FORBIDDEN)
    );
    // Tampered signed header.
    let mut bad = good.clone();
    bad.headers.insert("x-amz-meta-a", "2".parse().unwrap());
    assert_eq!(
        code(verify_head(&bad, &keys(), now)),
        "SignatureDoesNotMatch"
    );
    // Tampered method, path, query.
    let mut bad = good.clone();
    bad.method = http::Method::POST;
    assert_eq!(
        code(verify_head(&bad, &keys(), now)),
        "SignatureDoesNotMatch"
    );
    let mut bad = good.clone();
    bad.uri = "/bucket/obj?acl".parse().unwrap();
    assert_eq!(
        code(verify_head(&bad, &keys(), now)),
        "SignatureDoesNotMatch"
    );
    // Tampered payload hash.
    let mut bad = good.clone();
    bad.headers
        .insert("x-amz-content-sha256", sha_hex(b"y").parse().unwrap());
    assert_eq!(
        code(verify_head(&bad, &keys(), now)),
        "SignatureDoesNotMatch"
    );
    // An x-amz header added after signing.
    let mut bad = good.clone();
    bad.headers
        .insert("x-amz-copy-source", "/bucket/secret".parse().unwrap());
    let e = verify_head(&bad, &keys(), now).unwrap_err();
    assert_eq!(e.code(), "AccessDenied");
    assert!(e.message().contains("x-amz-copy-source"), "{e}");
    // An unsigned ordinary header is fine.
    let mut ok = good.clone();
    ok.headers.insert("user-agent", "curl".parse().unwrap());
    verify_head(&ok, &keys(), now).unwrap();

    // Clock skew, both ways.
    let skew = Duration::from_secs(16 * 60);
    assert_eq!(
        code(verify_head(&sign_at(SK, now - skew), &keys(), now)),
        "RequestTimeTooSkewed"
    );
    let e = verify_head(&sign_at(SK, now + skew), &keys(), now).unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        ("RequestTimeTooSkewed", http::StatusCode::FORBIDDEN)
    );
    verify_head(
        &sign_at(SK, now - Duration::from_secs(14 * 60)),
        &keys(),
        now,
    )
    .unwrap();

    // Missing x-amz-content-sha256.
    let mut bad = good.clone();
    bad.headers.remove("x-amz-content-sha256");
    assert_eq!(
        code(verify_head(&bad, &keys(), now)),
        "MissingSecurityHeader"
    );

    // Anonymous; both mechanisms at once.
    let anon = parts("GET", "/bucket/obj", &[("host", "localhost")]);
    let e = verify_head(&anon, &keys(), now).unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        ("AccessDenied", http::StatusCode::FORBIDDEN)
    );
    let mut both = good.clone();
    both.uri = "/bucket/obj?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        .parse()
        .unwrap();
    assert_eq!(code(verify_head(&both, &keys(), now)), "InvalidRequest");
}

#[test]
fn malformed_authorization_headers() {
    let now = SystemTime::now();
    let good = sdk_sign(
        "GET",
        "http://localhost/bucket/obj",
        &[("host", "localhost")],
        SignableBody::Bytes(b""),
        SK,
        now,
        None,
    );
    let value = good.headers["authorization"].to_str().unwrap().to_owned();
    let with = |v: &str| {
        let mut p = good.clone();
        p.headers.insert("authorization", v.parse().unwrap());
        verify_head(&p, &keys(), now)
    };
    with(&value).unwrap();
    // Extra whitespace around components is tolerated.
    with(&value.replace(", ", " ,  ")).unwrap();

    for bad in [
        "garbage".to_owned(),
        "AWS AKIAIOSFODNN7EXAMPLE:frJIUN8DYpKDtOLCwo//yllqDzg=".to_owned(),
        "AWS4-HMAC-SHA256".to_owned(),
        value.replace("Credential=", "Cred="),
        value.replace("SignedHeaders=", "Headers="),
        value.replace("/s3/", "/ec2/"),
        value.replace("aws4_request", "aws5_request"),
        value.replace("Credential=AKIAIOSFODNN7EXAMPLE/", "Credential="),
        value.replace("SignedHeaders=host;", "SignedHeaders="),
        value.replace("SignedHeaders=host;", "SignedHeaders=Host;"),
        value.replace("SignedHeaders=host;", "SignedHeaders=;"),
    ] {
        let e = with(&bad).unwrap_err();
        assert_eq!(
            (e.code(), e.status()),
            (
                "AuthorizationHeaderMalformed",
                http::StatusCode::BAD_REQUEST
            ),
            "{bad}"
        );
    }
    // A scope date other than the request's date.
    let d = format_amz_date(now);
    let other = format_amz_date(now - Duration::from_secs(86400));
    let e = with(&value.replace(&d[..8], &other[..8])).unwrap_err();
    assert_eq!(e.code(), "AuthorizationHeaderMalformed");
    // A signature that is not 64 hex digits.
    let sig_at = value.find("Signature=").unwrap() + "Signature=".len();
    assert_eq!(
        code(with(&format!("{}zz", &value[..sig_at]))),
        "SignatureDoesNotMatch"
    );
}

#[test]
fn presigned_parameter_errors() {
    let host = [("host", "examplebucket.s3.amazonaws.com")];
    let at = t2013();
    for (from, to) in [
        ("X-Amz-Expires=86400", "X-Amz-Expires=604801"),
        ("X-Amz-Expires=86400", "X-Amz-Expires=0"),
        ("X-Amz-Expires=86400", "X-Amz-Expires=soon"),
        ("X-Amz-SignedHeaders=host", "X-Amz-SignedHeaders=x-amz-date"),
        ("X-Amz-Date=20130524T000000Z", "X-Amz-Date=2013-05-24"),
        ("X-Amz-Date=20130524T000000Z", "X-Amz-Date=20130525T000000Z"),
        (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256",
            "X-Amz-Algorithm=AWS4-ECDSA-P256-SHA256",
        ),
        ("&X-Amz-Credential=", "&X-Amz-Cred="),
    ] {
        let uri = DOC_PRESIGNED.replace(from, to);
        assert_ne!(uri, DOC_PRESIGNED);
        let e = verify_head(&parts("GET", &uri, &host), &keys(), at).unwrap_err();
        assert_eq!(e.code(), "AuthorizationHeaderMalformed", "{to}: {e}");
    }
    // Unknown key in a presigned URL.
    let uri = DOC_PRESIGNED.replace("AKIAIOSFODNN7EXAMPLE", "AKIANOTKNOWN");
    assert_eq!(
        code(verify_head(&parts("GET", &uri, &host), &keys(), at)),
        "InvalidAccessKeyId"
    );
    // An x-amz header sent along a presigned URL must have been signed.
    let mut hdrs = host.to_vec();
    hdrs.push(("x-amz-acl", "public-read"));
    assert_eq!(
        code(verify_head(
            &parts("GET", DOC_PRESIGNED, &hdrs),
            &keys(),
            at
        )),
        "AccessDenied"
    );
}

#[test]
fn canonical_uri_rules() {
    assert_eq!(canonical_uri("/test$file.text"), "/test%24file.text");
    assert_eq!(canonical_uri("/a%20b/c+d"), "/a%20b/c%2Bd");
    assert_eq!(canonical_uri("/a%2Fb/c"), "/a%2Fb/c");
    assert_eq!(canonical_uri("/%7euser/%C3%BC"), "/~user/%C3%BC");
    assert_eq!(canonical_uri("/"), "/");
    assert_eq!(canonical_uri("/a//b/"), "/a//b/");
}

#[test]
fn dates_round_trip() {
    let t = parse_amz_date("20130524T000000Z").unwrap();
    assert_eq!(httpdate::fmt_http_date(t), "Fri, 24 May 2013 00:00:00 GMT");
    for s in [
        "20000229T235959Z",
        "19700101T000000Z",
        "21000301T120000Z",
        DATE,
    ] {
        assert_eq!(format_amz_date(parse_amz_date(s).unwrap()), s);
    }
    for bad in [
        "20130524T000000",
        "2013052xT000000Z",
        "20131324T000000Z",
        "20130524 000000Z",
    ] {
        assert!(parse_amz_date(bad).is_none(), "{bad}");
    }
}

#[test]
fn error_codes_and_statuses() {
    use http::StatusCode as S;
    let cases = [
        (
            AuthError::SignatureDoesNotMatch("m".into()),
            "SignatureDoesNotMatch",
            S::FORBIDDEN,
        ),
        (
            AuthError::AccessDenied("m".into()),
            "AccessDenied",
            S::FORBIDDEN,
        ),
        (
            AuthError::RequestTimeTooSkewed("m".into()),
            "RequestTimeTooSkewed",
            S::FORBIDDEN,
        ),
        (
            AuthError::InvalidAccessKeyId("m".into()),
            "InvalidAccessKeyId",
            S::FORBIDDEN,
        ),
        (
            AuthError::AuthorizationHeaderMalformed("m".into()),
            "AuthorizationHeaderMalformed",
            S::BAD_REQUEST,
        ),
        (
            AuthError::XAmzContentSHA256Mismatch("m".into()),
            "XAmzContentSHA256Mismatch",
            S::BAD_REQUEST,
        ),
        (
            AuthError::IncompleteBody("m".into()),
            "IncompleteBody",
            S::BAD_REQUEST,
        ),
        (
            AuthError::BadDigest("m".into()),
            "BadDigest",
            S::BAD_REQUEST,
        ),
        (
            AuthError::InvalidRequest("m".into()),
            "InvalidRequest",
            S::BAD_REQUEST,
        ),
        (
            AuthError::MissingSecurityHeader("m".into()),
            "MissingSecurityHeader",
            S::BAD_REQUEST,
        ),
    ];
    for (e, c, s) in cases {
        assert_eq!((e.code(), e.status(), e.message().as_str()), (c, s, "m"));
    }
}

// ---------------------------------------------------------------------------------------------
// aws-chunked bodies built here (chunk signatures computed by the test, not by the module)

struct TestChunker {
    key: [u8; 32],
    prev: String,
}

impl TestChunker {
    fn sign(&mut self, data: &[u8]) -> String {
        let sts = format!(
            "AWS4-HMAC-SHA256-PAYLOAD\n{DATE}\n{SCOPE}\n{}\n{}\n{}",
            self.prev,
            sha_hex(b""),
            sha_hex(data)
        );
        self.prev = hmac_hex(&self.key, &sts).0;
        self.prev.clone()
    }

    fn sign_trailer(&mut self, canonical: &str) -> String {
        let sts = format!(
            "AWS4-HMAC-SHA256-TRAILER\n{DATE}\n{SCOPE}\n{}\n{}",
            self.prev,
            sha_hex(canonical.as_bytes())
        );
        hmac_hex(&self.key, &sts).0
    }
}

const SEED: &str = "4f232c4386841ef735655705268965c44a0e4690baa4adea153f7db9fa80a0a9";

fn signer(trailer: Option<ChecksumAlgorithm>) -> BodyCheck {
    let mut seed = [0; 32];
    hex::decode_to_slice(SEED, &mut seed).unwrap();
    BodyCheck::SignedChunks(ChunkSigner {
        key: signing_key(SK, "20130524", "us-east-1"),
        amz_date: DATE.into(),
        scope: SCOPE.into(),
        seed,
        trailer: trailer.is_some(),
        trailer_alg: trailer,
    })
}

fn signed_body(chunks: &[&[u8]], trailer: Option<(&str, &str)>) -> Vec<u8> {
    let mut c = TestChunker {
        key: test_signing_key(SK, "20130524"),
        prev: SEED.into(),
    };
    let mut b = Vec::new();
    for data in chunks {
        let sig = c.sign(data);
        b.extend_from_slice(format!("{:x};chunk-signature={sig}\r\n", data.len()).as_bytes());
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    let sig = c.sign(b"");
    b.extend_from_slice(format!("0;chunk-signature={sig}\r\n").as_bytes());
    match trailer {
        None => b.extend_from_slice(b"\r\n"),
        Some((name, value)) => {
            let tsig = c.sign_trailer(&format!("{name}:{value}\n"));
            b.extend_from_slice(
                format!("{name}:{value}\r\nx-amz-trailer-signature:{tsig}\r\n\r\n").as_bytes(),
            );
        }
    }
    b
}

const SMALL: [&[u8]; 3] = [b"hello", b" chunked\r\n", b"world!"];

fn small_payload() -> Vec<u8> {
    SMALL.concat()
}

/// Decodes with the input split at every offset, and also fed one byte at a time.
fn assert_every_split(check: &BodyCheck, body: &[u8], want: &[u8]) {
    let len = Some(want.len() as u64);
    for cut in 0..=body.len() {
        let out = decode_all(check.clone(), len, &[&body[..cut], &body[cut..]])
            .unwrap_or_else(|e| panic!("cut at {cut}: {e}"));
        assert_eq!(out, want, "cut at {cut}");
    }
    for a in (0..body.len()).step_by(7) {
        for b in (a..body.len()).step_by(5) {
            let out = decode_all(check.clone(), len, &[&body[..a], &body[a..b], &body[b..]]);
            assert_eq!(out.unwrap(), want, "cuts at {a}, {b}");
        }
    }
    let bytes: Vec<&[u8]> = body.chunks(1).collect();
    assert_eq!(decode_all(check.clone(), len, &bytes).unwrap(), want);
}

#[test]
fn signed_chunks_every_split() {
    let body = signed_body(&SMALL, None);
    assert_every_split(&signer(None), &body, &small_payload());
}

#[test]
fn signed_chunks_with_trailer_every_split() {
    let want = small_payload();
    for alg in ChecksumAlgorithm::ALL {
        let value = alg.checksum_b64(&want);
        let body = signed_body(&SMALL, Some((alg.header_name(), &value)));
        assert_every_split(&signer(Some(alg)), &body, &want);
        // Correctly signed trailer, but a wrong checksum.
        let wrong = alg.checksum_b64(b"something else");
        let bad = signed_body(&SMALL, Some((alg.header_name(), &wrong)));
        let e = decode_all(signer(Some(alg)), Some(want.len() as u64), &[&bad]).unwrap_err();
        assert_eq!(e.code(), "BadDigest", "{alg:?}");
        assert!(e.message().contains(alg.name()), "{e}");
    }
    // The trailer is not the one x-amz-trailer declared.
    let body = signed_body(
        &SMALL,
        Some((
            "x-amz-checksum-crc32",
            &ChecksumAlgorithm::Crc32.checksum_b64(&want),
        )),
    );
    assert_eq!(
        code(decode_all(
            signer(Some(ChecksumAlgorithm::Crc32c)),
            None,
            &[&body]
        )),
        "InvalidRequest"
    );
}

#[test]
fn signed_chunks_tampering_and_truncation() {
    let body = signed_body(&SMALL, None);
    let want_len = Some(small_payload().len() as u64);
    let data_at = body.windows(5).position(|w| w == b"hello").unwrap();
    let sig_at = body
        .windows(16)
        .position(|w| w == b"chunk-signature=")
        .unwrap()
        + 16;
    for (what, at) in [("data", data_at + 1), ("signature", sig_at + 3)] {
        let mut bad = body.clone();
        bad[at] = if bad[at] == b'0' { b'1' } else { b'0' };
        let e = decode_all(signer(None), want_len, &[&bad]).unwrap_err();
        assert_eq!(e.code(), "SignatureDoesNotMatch", "{what}");
    }
    // Two correctly signed chunk frames swapped: the chain breaks.
    let starts: Vec<usize> = body
        .windows(16)
        .enumerate()
        .filter(|(_, w)| w == b"chunk-signature=")
        .map(|(i, _)| i - 2) // one hex digit of size and the ';'
        .collect();
    let swapped = [
        &body[..starts[0]],
        &body[starts[1]..starts[2]],
        &body[starts[0]..starts[1]],
        &body[starts[2]..],
    ]
    .concat();
    assert_eq!(swapped.len(), body.len());
    assert_eq!(
        code(decode_all(signer(None), want_len, &[&swapped])),
        "SignatureDoesNotMatch"
    );
    // A different seed.
    let mut other = signer(None);
    if let BodyCheck::SignedChunks(s) = &mut other {
        s.seed[0] ^= 1;
    }
    assert_eq!(
        code(decode_all(other, want_len, &[&body])),
        "SignatureDoesNotMatch"
    );
    // Truncated anywhere before the closing CRLF: IncompleteBody.
    for cut in 0..body.len() - 2 {
        let e = decode_all(signer(None), want_len, &[&body[..cut]]).unwrap_err();
        assert_eq!(e.code(), "IncompleteBody", "cut at {cut}");
    }
    // Missing chunk-signature; bytes after the end; oversize chunk; bad size.
    assert_eq!(
        code(decode_all(signer(None), None, &[b"5\r\nhello\r\n"])),
        "SignatureDoesNotMatch"
    );
    let mut extra = body.clone();
    extra.extend_from_slice(b"x");
    assert_eq!(
        code(decode_all(signer(None), want_len, &[&extra])),
        "InvalidRequest"
    );
    let huge = format!("1000001;chunk-signature={SEED}\r\n");
    assert_eq!(
        code(decode_all(signer(None), None, &[huge.as_bytes()])),
        "InvalidRequest"
    );
    let bad = format!("xyz;chunk-signature={SEED}\r\n");
    assert_eq!(
        code(decode_all(signer(None), None, &[bad.as_bytes()])),
        "InvalidRequest"
    );
    // A declared length smaller than the first chunk fails before buffering it.
    assert_eq!(
        code(decode_all(signer(None), Some(2), &[&body])),
        "IncompleteBody"
    );
}

fn unsigned_body(chunks: &[&[u8]], trailers: &[(&str, &str)], blank_after_final: bool) -> Vec<u8> {
    let mut b = Vec::new();
    for data in chunks {
        b.extend_from_slice(format!("{:x}\r\n", data.len()).as_bytes());
        b.extend_from_slice(data);
        b.extend_from_slice(b"\r\n");
    }
    b.extend_from_slice(b"0\r\n");
    if blank_after_final {
        b.extend_from_slice(b"\r\n");
    }
    for (n, v) in trailers {
        b.extend_from_slice(format!("{n}:{v}\r\n").as_bytes());
    }
    b.extend_from_slice(b"\r\n");
    b
}

#[test]
fn unsigned_trailer_checksums() {
    let want = small_payload();
    let len = Some(want.len() as u64);
    for alg in ChecksumAlgorithm::ALL {
        let value = alg.checksum_b64(&want);
        let body = unsigned_body(&SMALL, &[(alg.header_name(), &value)], false);
        assert_every_split(&BodyCheck::UnsignedChunks, &body, &want);
        let mut d = BodyDecoder::new(BodyCheck::UnsignedChunks, len);
        assert_eq!(d.feed(Bytes::from(body)).unwrap().concat(), want);
        assert_eq!(d.finish_checksum().unwrap(), Some((alg, value.clone())));

        // Blank line after the final chunk, and no closing blank line: both tolerated.
        let body = unsigned_body(&SMALL, &[(alg.header_name(), &value)], true);
        decode_all(BodyCheck::UnsignedChunks, len, &[&body]).unwrap();
        decode_all(BodyCheck::UnsignedChunks, len, &[&body[..body.len() - 2]]).unwrap();

        // Wrong checksum.
        let wrong = alg.checksum_b64(b"hello chunked\r\nworld?");
        let body = unsigned_body(&SMALL, &[(alg.header_name(), &wrong)], false);
        let e = decode_all(BodyCheck::UnsignedChunks, len, &[&body]).unwrap_err();
        assert_eq!(
            (e.code(), e.status()),
            ("BadDigest", http::StatusCode::BAD_REQUEST)
        );
        // Data tampered in flight.
        let body = unsigned_body(
            &[b"hellO", SMALL[1], SMALL[2]],
            &[(alg.header_name(), &value)],
            false,
        );
        assert_eq!(
            code(decode_all(BodyCheck::UnsignedChunks, len, &[&body])),
            "BadDigest"
        );
    }
    // Unsupported algorithm; malformed value; two checksums.
    let body = unsigned_body(&SMALL, &[("x-amz-checksum-md7", "AAAA")], false);
    assert_eq!(
        code(decode_all(BodyCheck::UnsignedChunks, len, &[&body])),
        "InvalidRequest"
    );
    let body = unsigned_body(&SMALL, &[("x-amz-checksum-crc32", "!!")], false);
    assert_eq!(
        code(decode_all(BodyCheck::UnsignedChunks, len, &[&body])),
        "InvalidRequest"
    );
    let crc = ChecksumAlgorithm::Crc32.checksum_b64(&want);
    let crcc = ChecksumAlgorithm::Crc32c.checksum_b64(&want);
    let body = unsigned_body(
        &SMALL,
        &[
            ("x-amz-checksum-crc32", &crc),
            ("x-amz-checksum-crc32c", &crcc),
        ],
        false,
    );
    assert_eq!(
        code(decode_all(BodyCheck::UnsignedChunks, len, &[&body])),
        "InvalidRequest"
    );
    // No trailer at all is accepted (nothing claimed), decoded length still enforced.
    let body = unsigned_body(&SMALL, &[], false);
    assert_eq!(
        decode_all(BodyCheck::UnsignedChunks, len, &[&body]).unwrap(),
        want
    );
    assert_eq!(
        code(decode_all(
            BodyCheck::UnsignedChunks,
            Some(want.len() as u64 + 1),
            &[&body]
        )),
        "IncompleteBody"
    );
    // Truncated inside the data or a trailer line.
    let body = unsigned_body(&SMALL, &[("x-amz-checksum-crc32", &crc)], false);
    for cut in [3, 10, 20, body.len() - 10] {
        assert_eq!(
            code(decode_all(BodyCheck::UnsignedChunks, len, &[&body[..cut]])),
            "IncompleteBody",
            "cut at {cut}"
        );
    }
}

/// Regression: an unsigned-trailer body cut off exactly where its trailer starts was accepted
/// without any checksum check, because the decoder was not told what `x-amz-trailer` declared.
#[test]
fn unsigned_trailer_declared_by_x_amz_trailer_is_required() {
    let want = small_payload();
    let len = Some(want.len() as u64);
    let decode = |alg: Option<ChecksumAlgorithm>, pieces: &[&[u8]]| {
        let mut d = BodyDecoder::with_trailer(BodyCheck::UnsignedChunks, len, alg);
        let mut out = Vec::new();
        for p in pieces {
            for b in d.feed(Bytes::copy_from_slice(p))? {
                out.extend_from_slice(&b);
            }
        }
        d.finish_checksum().map(|sum| (out, sum))
    };
    for alg in ChecksumAlgorithm::ALL {
        let value = alg.checksum_b64(&want);
        let body = unsigned_body(&SMALL, &[(alg.header_name(), &value)], false);
        // Whole, with the closing blank line or without it, split anywhere: accepted.
        for cut in 0..=body.len() {
            let (out, sum) = decode(Some(alg), &[&body[..cut], &body[cut..]])
                .unwrap_or_else(|e| panic!("{alg:?} cut at {cut}: {e}"));
            assert_eq!(out, want);
            assert_eq!(sum, Some((alg, value.clone())));
        }
        decode(Some(alg), &[&body[..body.len() - 2]]).unwrap();

        // Cut off where the trailer starts (with or without a blank line before it), or
        // anywhere inside the trailer line: IncompleteBody. Without the declaration the same
        // cut is still accepted (nothing was claimed), as before.
        let trailer_at = body
            .windows(14)
            .position(|w| w == b"x-amz-checksum")
            .unwrap();
        for cut in trailer_at..body.len() - 2 {
            assert_eq!(
                code(decode(Some(alg), &[&body[..cut]])),
                "IncompleteBody",
                "cut {cut}"
            );
        }
        assert_eq!(decode(None, &[&body[..trailer_at]]).unwrap().1, None);
        // `0\r\n\r\n`: the blank line may be the separator some encoders send before the
        // trailer, so the body may still have been cut short.
        let empty = unsigned_body(&SMALL, &[], false);
        assert_eq!(code(decode(Some(alg), &[&empty])), "IncompleteBody");

        // A closed trailer section without the declared checksum, or with another one.
        let closed = unsigned_body(&SMALL, &[], true);
        assert_eq!(code(decode(Some(alg), &[&closed])), "InvalidRequest");
        let other = ChecksumAlgorithm::ALL
            .into_iter()
            .find(|a| *a != alg)
            .unwrap();
        let body = unsigned_body(
            &SMALL,
            &[(other.header_name(), &other.checksum_b64(&want))],
            false,
        );
        assert_eq!(code(decode(Some(alg), &[&body])), "InvalidRequest");

        // The declared checksum, wrong: BadDigest.
        let wrong = alg.checksum_b64(b"something else");
        let body = unsigned_body(&SMALL, &[(alg.header_name(), &wrong)], false);
        assert_eq!(code(decode(Some(alg), &[&body])), "BadDigest");
    }
}

/// The declaration reaches the decoder from the request head: `verify_head` of an SDK-signed
/// `STREAMING-UNSIGNED-PAYLOAD-TRAILER` request reports `x-amz-trailer` in `Verified::trailer`.
#[test]
fn sdk_unsigned_trailer_head_reports_the_declared_trailer() {
    let now = SystemTime::now();
    let p = sdk_sign(
        "PUT",
        "https://bucket.s3.example.com/key",
        &[
            ("content-encoding", "aws-chunked"),
            ("x-amz-decoded-content-length", "21"),
            ("x-amz-trailer", "x-amz-checksum-crc32"),
        ],
        SignableBody::Precomputed(STREAMING_UNSIGNED_TRAILER.into()),
        SK,
        now,
        None,
    );
    let v = verify_head(&p, &keys(), now).unwrap();
    assert!(matches!(v.body, BodyCheck::UnsignedChunks));
    assert_eq!(v.trailer, Some(ChecksumAlgorithm::Crc32));
    let want = small_payload();
    // The body ends where the declared trailer should start: refused.
    let body = unsigned_body(&SMALL, &[], false);
    let mut d = BodyDecoder::with_trailer(v.body, Some(want.len() as u64), v.trailer);
    assert_eq!(d.feed(Bytes::from(body)).unwrap().concat(), want);
    assert_eq!(code(d.finish()), "IncompleteBody");
}

#[test]
fn known_checksum_values() {
    // CRC-64/NVME check value, and AWS's crc32c of 66560 'a's from the trailer example.
    let mut h = crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc64Nvme);
    h.update(b"123456789");
    assert_eq!(h.finalize(), 0xae8b_1486_0a79_9888);
    assert_eq!(
        ChecksumAlgorithm::Crc32c.checksum_b64(&[b'a'; 66560]),
        "sOO8/Q=="
    );
    assert_eq!(
        ChecksumAlgorithm::Crc32.checksum_b64(b"123456789"),
        base64::engine::general_purpose::STANDARD.encode(0xcbf4_3926u32.to_be_bytes())
    );
    assert_eq!(
        ChecksumAlgorithm::Sha256.checksum_b64(b""),
        "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU="
    );
}

#[test]
fn sha256_body() {
    let body = b"some object bytes";
    let check = BodyCheck::Sha256(sha_hex(body).to_uppercase());
    for cut in 0..=body.len() {
        decode_all(check.clone(), None, &[&body[..cut], &body[cut..]]).unwrap();
    }
    let e = decode_all(check.clone(), None, &[b"some object byteS"]).unwrap_err();
    assert_eq!(
        (e.code(), e.status()),
        ("XAmzContentSHA256Mismatch", http::StatusCode::BAD_REQUEST)
    );
    assert_eq!(
        code(decode_all(check.clone(), None, &[&body[..5]])),
        "XAmzContentSHA256Mismatch"
    );
    // Content-Length disagreement.
    assert_eq!(
        code(decode_all(check, Some(body.len() as u64 + 1), &[body])),
        "IncompleteBody"
    );
    // UNSIGNED-PAYLOAD passes anything through.
    assert_eq!(
        decode_all(BodyCheck::None, None, &[b"ab", b"", b"c"]).unwrap(),
        b"abc"
    );
}

#[test]
fn checksum_headers() {
    let body = b"The quick brown fox";
    let md5 = base64::engine::general_purpose::STANDARD.encode(md5::Md5::digest(body));
    let mk = |hs: &[(&str, &str)]| {
        let mut m = http::HeaderMap::new();
        for (k, v) in hs {
            m.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        ChecksumCheck::from_headers(&m)
    };
    let run = |mut c: ChecksumCheck, data: &[u8]| {
        let (a, b) = data.split_at(data.len() / 2);
        c.update(a);
        c.update(b);
        c.finish()
    };
    assert!(mk(&[]).unwrap().is_empty());
    run(mk(&[("content-md5", &md5)]).unwrap(), body).unwrap();
    let e = run(
        mk(&[("content-md5", &md5)]).unwrap(),
        b"The quick brown fix",
    )
    .unwrap_err();
    assert_eq!(e.code(), "BadDigest");
    // Malformed, short or empty: InvalidDigest (S3's code), not a body mismatch.
    assert_eq!(code(mk(&[("content-md5", "not base64!")])), "InvalidDigest");
    assert_eq!(code(mk(&[("content-md5", "AAAA")])), "InvalidDigest");
    assert_eq!(code(mk(&[("content-md5", "")])), "InvalidDigest");
    for alg in ChecksumAlgorithm::ALL {
        let v = alg.checksum_b64(body);
        let c = mk(&[
            (alg.header_name(), &v),
            ("x-amz-checksum-algorithm", alg.name()),
        ])
        .unwrap();
        assert_eq!(c.checksum(), Some((alg, v.as_str())));
        run(c, body).unwrap();
        let c = mk(&[(alg.header_name(), &v), ("content-md5", &md5)]).unwrap();
        let e = run(c, b"The quick brown fix").unwrap_err();
        assert_eq!(e.code(), "BadDigest");
        let c = mk(&[(alg.header_name(), &v)]).unwrap();
        let e = run(c, b"The quick brown fix").unwrap_err();
        assert_eq!(
            e,
            AuthError::BadDigest(format!(
                "The {} you specified did not match the calculated checksum.",
                alg.name()
            ))
        );
    }
    let crc = ChecksumAlgorithm::Crc32.checksum_b64(body);
    let sha = ChecksumAlgorithm::Sha256.checksum_b64(body);
    assert_eq!(
        code(mk(&[
            ("x-amz-checksum-crc32", &crc),
            ("x-amz-checksum-sha256", &sha)
        ])),
        "InvalidRequest"
    );
    assert_eq!(
        code(mk(&[("x-amz-checksum-sha256", &crc)])),
        "InvalidRequest"
    );
    assert_eq!(
        code(mk(&[("x-amz-checksum-whirlpool", &crc)])),
        "InvalidRequest"
    );
}

#[test]
fn signing_keys_are_remembered_only_after_a_valid_signature() {
    let good = doc_get_object();
    let mut forged = good.clone();
    forged
        .headers
        .insert("range", "bytes=0-10".parse().unwrap());
    let ks = keys();
    let credential = format!("{AK}/{SCOPE}");
    let scope = parse_credential(&credential).unwrap();
    let cred = ks.get(AK).unwrap().clone();
    // A forged request is refused and teaches the store nothing.
    assert_eq!(
        code(verify_head(&forged, &ks, t2013())),
        "SignatureDoesNotMatch"
    );
    assert!(!ks.signing.get(&cred, &scope).1);
    // A valid one is remembered (with the key the chain gives), and shared by clones.
    verify_head(&good, &ks, t2013()).unwrap();
    let (k, remembered) = ks.clone().signing.get(&cred, &scope);
    assert!(remembered);
    assert_eq!(k, test_signing_key(SK, "20130524"));
    // With the key remembered, signatures are still checked.
    assert_eq!(
        code(verify_head(&forged, &ks, t2013())),
        "SignatureDoesNotMatch"
    );
    verify_head(&good, &ks, t2013()).unwrap();
}

/// The raw-query shortcut answers exactly what decoding, re-encoding and sorting answers,
/// or declines: over queries made of canonical, mis-escaped, unsorted and '='-less pairs.
#[test]
fn raw_canonical_query_matches_the_decoded_path() {
    let pieces = [
        "X-Amz-Algorithm=AWS4-HMAC-SHA256",
        "X-Amz-Credential=AK%2F20130524%2Fus-east-1%2Fs3%2Faws4_request",
        "X-Amz-Credential=AK%2f20130524",
        "X-Amz-Date=20130524T000000Z",
        "X-Amz-Signature=abc",
        "a=%41",
        "a=b%20c",
        "a=b+c",
        "a=",
        "a",
        "b=%E2%82%AC",
        "b=~x.y_z-",
        "c=%2",
        "c=%zz",
        "c=a/b",
        "",
    ];
    let mut seed = 0x2545_f491_u64;
    let mut checked = 0;
    for _ in 0..20_000 {
        let n = (seed % 5) as usize + 1;
        let mut q = Vec::new();
        for _ in 0..n {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            q.push(pieces[(seed % pieces.len() as u64) as usize]);
        }
        let q = q.join("&");
        for exclude in [None, Some("X-Amz-Signature")] {
            let mut raw = b"prefix".to_vec();
            if push_raw_canonical_query(&mut raw, &q, exclude) {
                checked += 1;
                let want = canonical_query(&parse_query(&q), exclude);
                assert_eq!(
                    &raw[6..],
                    want.as_bytes(),
                    "query {q:?}, exclude {exclude:?}"
                );
            } else {
                assert_eq!(raw, b"prefix", "nothing appended when declined: {q:?}");
            }
        }
    }
    assert!(
        checked > 1_000,
        "the shortcut was taken only {checked} times"
    );
    let mut out = Vec::new();
    assert!(
        !push_raw_canonical_query(&mut out, "b=1&a=1", None),
        "unsorted"
    );
    assert!(
        !push_raw_canonical_query(&mut out, "a=%2f", None),
        "lower-case escape"
    );
    assert!(
        !push_raw_canonical_query(&mut out, "a=%41", None),
        "escaped unreserved byte"
    );
    assert!(push_raw_canonical_query(&mut out, "a=1&b=%2F", None));
    assert_eq!(out, b"a=1&b=%2F");
}

const EXAMPLE_HOST: (&str, &str) = ("host", "examplebucket.s3.amazonaws.com");

/// The presigned cache answers what a full verification would, for the verified request
/// and for every variation of it, and answers from memory only the identical request
/// while it is valid.
#[test]
fn presigned_cache_answers_as_verification_does() {
    let (host, store) = (EXAMPLE_HOST, keys());
    let mut cache = PresignedCache::with_capacity(8);
    let t = t2013() + Duration::from_secs(3600);
    let good = parts("GET", DOC_PRESIGNED, &[host]);
    let v = cache.verify_head(&good, &store, t).unwrap();
    assert!(v.presigned);
    assert_eq!((cache.len(), cache.hits()), (1, 0));
    let v = cache.verify_head(&good, &store, t).unwrap();
    assert_eq!((v.access_key.as_str(), v.presigned), (AK, true));
    assert_eq!(
        cache.hits(),
        1,
        "the same request again is answered from the cache"
    );
    let same = |r: &Result<Verified, AuthError>, want: &Result<Verified, AuthError>| match (r, want)
    {
        (Ok(a), Ok(b)) => a.access_key == b.access_key && a.presigned == b.presigned,
        (Err(a), Err(b)) => a == b,
        _ => false,
    };
    let tampered = DOC_PRESIGNED.replace("/test.txt", "/other.txt");
    let auth_header = auth("host", "0".repeat(64).as_str());
    let mut cases: Vec<(&str, http::request::Parts, SystemTime, KeyStore)> = vec![
        (
            "expired",
            parts("GET", DOC_PRESIGNED, &[host]),
            t2013() + Duration::from_secs(86401),
            store.clone(),
        ),
        (
            "last second",
            parts("GET", DOC_PRESIGNED, &[host]),
            t2013() + Duration::from_secs(86400),
            store.clone(),
        ),
        (
            "too early",
            parts("GET", DOC_PRESIGNED, &[host]),
            t2013() - Duration::from_secs(16 * 60),
            store.clone(),
        ),
        (
            "early within skew",
            parts("GET", DOC_PRESIGNED, &[host]),
            t2013() - Duration::from_secs(14 * 60),
            store.clone(),
        ),
        (
            "other host",
            parts("GET", DOC_PRESIGNED, &[("host", "evil.example")]),
            t,
            store.clone(),
        ),
        (
            "host twice",
            parts("GET", DOC_PRESIGNED, &[host, ("host", "evil.example")]),
            t,
            store.clone(),
        ),
        (
            "other path",
            parts("GET", &tampered, &[host]),
            t,
            store.clone(),
        ),
        (
            "unsigned amz header",
            parts("GET", DOC_PRESIGNED, &[host, ("x-amz-meta-a", "1")]),
            t,
            store.clone(),
        ),
        (
            "authorization too",
            parts(
                "GET",
                DOC_PRESIGNED,
                &[host, ("authorization", auth_header.as_str())],
            ),
            t,
            store.clone(),
        ),
        (
            "other method",
            parts("DELETE", DOC_PRESIGNED, &[host]),
            t,
            store.clone(),
        ),
        (
            "HEAD",
            parts("HEAD", DOC_PRESIGNED, &[host]),
            t,
            store.clone(),
        ),
        (
            "absolute URI",
            parts(
                "GET",
                &format!("http://examplebucket.s3.amazonaws.com{DOC_PRESIGNED}"),
                &[host],
            ),
            t,
            store.clone(),
        ),
        (
            "store without the key",
            parts("GET", DOC_PRESIGNED, &[host]),
            t,
            KeyStore::new(vec![]),
        ),
        (
            "a new store with the key",
            parts("GET", DOC_PRESIGNED, &[host]),
            t,
            keys(),
        ),
    ];
    for (what, p, now, ks) in cases.drain(..) {
        let want = verify_head(&p, &ks, now);
        for round in 0..2 {
            let got = cache.verify_head(&p, &ks, now);
            assert!(
                same(&got, &want),
                "{what} (round {round}): cache {got:?}, verification {want:?}"
            );
        }
    }
    // Only the variations that verify were remembered besides the first, and each
    // is answered from memory in its second round.
    assert!(cache.hits() >= 4, "hits {}", cache.hits());
    // One entry per signature: the last request verified under it (here, under another
    // store) replaced the original's, which is verified again, then remembered again.
    let hits = cache.hits();
    cache.verify_head(&good, &store, t).unwrap();
    assert_eq!(cache.hits(), hits);
    cache.verify_head(&good, &store, t).unwrap();
    assert_eq!(cache.hits(), hits + 1);
}

/// A full cache drops its oldest entries and stays within its capacity.
#[test]
fn presigned_cache_is_bounded() {
    let (host, store) = (EXAMPLE_HOST, keys());
    let mut cache = PresignedCache::with_capacity(2);
    let t = t2013() + Duration::from_secs(3600);
    // Signatures that fail are not remembered.
    for i in 0..5 {
        let bad = DOC_PRESIGNED.replace("X-Amz-Signature=a", &format!("X-Amz-Signature={i}"));
        cache
            .verify_head(&parts("GET", &bad, &[host]), &store, t)
            .unwrap_err();
    }
    assert_eq!(cache.len(), 0);
    for path in ["/a", "/b", "/c"] {
        let url = format!("{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={AK}%2F{}&X-Amz-Date={DATE}&X-Amz-Expires=86400&X-Amz-SignedHeaders=host&X-Amz-Signature=",
            SCOPE.replace('/', "%2F"));
        let sig = {
            let canonical_query = url
                .split_once('?')
                .unwrap()
                .1
                .trim_end_matches("&X-Amz-Signature=");
            let creq = format!(
                "GET\n{path}\n{canonical_query}\nhost:{}\n\nhost\nUNSIGNED-PAYLOAD",
                host.1
            );
            let sts = format!(
                "AWS4-HMAC-SHA256\n{DATE}\n{SCOPE}\n{}",
                hex::encode(sha2::Sha256::digest(creq.as_bytes()))
            );
            let mut k = format!("AWS4{SK}").into_bytes();
            for part in ["20130524", "us-east-1", "s3", "aws4_request"] {
                k = hmac(&k, part.as_bytes()).to_vec();
            }
            hex::encode(hmac(&k, sts.as_bytes()))
        };
        let signed = parts("GET", &format!("{url}{sig}"), &[host]);
        cache.verify_head(&signed, &store, t).unwrap();
        assert!(cache.len() <= 2);
    }
    assert_eq!(cache.len(), 2);
}
