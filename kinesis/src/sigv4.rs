//! AWS Signature Version 4: every request must carry SigV4 material, and unless the server's
//! [`Authorizer`] is open its signature is checked against the secret of the key that signed
//! it, as AWS checks it.
//!
//! The check rebuilds the canonical request from what arrived (method, path, query, the headers
//! the client signed, the SHA-256 of the body), the string to sign from the date and scope, and
//! the signature from the secret key; then compares in constant time. The date must be within 15
//! minutes of the server's clock. Presigned URLs (`X-Amz-Signature` in the query) are checked
//! the same way, with the query's own parameters.
//!
//! # Example
//!
//! ```
//! use axum::http::{HeaderMap, Method, Uri};
//! use sluice_auth::Authorizer;
//! use sluice_kinesis::sigv4::{sign_json_post, verify};
//!
//! let (host, target, json) = ("127.0.0.1:4567", "Kinesis_20131202.ListStreams", "application/x-amz-json-1.1");
//! let body = b"{}";
//! let mut headers = HeaderMap::new();
//! headers.insert("host", host.parse().unwrap());
//! headers.insert("content-type", json.parse().unwrap());
//! headers.insert("x-amz-target", target.parse().unwrap());
//! let now = chrono::Utc::now().timestamp();
//! for (name, value) in sign_json_post(host, target, body, ("AKIDEXAMPLE", "secret"), "us-east-1", "kinesis", json, now) {
//!     headers.insert(name, value.parse().unwrap());
//! }
//! let uri = Uri::from_static("/");
//! let server = Authorizer::open().with_password("AKIDEXAMPLE", "secret");
//! assert!(verify(&server, &Method::POST, &uri, &headers, body).is_ok());
//! let other = Authorizer::open().with_password("AKIDEXAMPLE", "another secret");
//! assert!(verify(&other, &Method::POST, &uri, &headers, body).is_err());
//! ```

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::http::{HeaderMap, Method, Uri, header};
use ring::{digest, hmac};
use sluice_auth::Authorizer;

use crate::error::{ApiError, ErrorKind};

/// How far a request's date may be from the server's clock.
const MAX_SKEW_SECONDS: i64 = 15 * 60;
const ALGORITHM: &str = "AWS4-HMAC-SHA256";
const UNSIGNED_PAYLOAD: &str = "UNSIGNED-PAYLOAD";

/// Checks a request's SigV4 material: present always (AWS refuses an unsigned request), and,
/// unless `auth` is open, signed with the secret of a key `auth` knows.
pub fn verify(
    auth: &Authorizer,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<(), ApiError> {
    let signed = match Signed::from_request(uri, headers)? {
        Some(signed) => signed,
        None => {
            return Err(ApiError::new(
                ErrorKind::MissingAuthenticationToken,
                "Missing Authentication Token",
            ));
        }
    };
    let secret = match auth.signing_secret(&signed.access_key) {
        Ok(None) => return Ok(()),
        Ok(Some(secret)) => secret,
        Err(_) => {
            return Err(ApiError::new(
                ErrorKind::UnrecognizedClient,
                "The security token included in the request is invalid.",
            ));
        }
    };
    check_skew(&signed.amz_date, now_seconds())?;
    let canonical = canonical_request(method, uri, headers, body, &signed)?;
    let expected = signature(secret, &signed.scope, &signed.amz_date, &canonical);
    let given = decode_hex(&signed.signature).unwrap_or_default();
    // Constant-time comparison, through ring's HMAC verification of the expected bytes.
    let key = hmac::Key::new(hmac::HMAC_SHA256, b"sluice-signature-compare");
    let tag = hmac::sign(&key, &expected);
    if given.len() != expected.len() || hmac::verify(&key, &given, tag.as_ref()).is_err() {
        return Err(ApiError::new(
            ErrorKind::InvalidSignature,
            "The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.",
        ));
    }
    Ok(())
}
/// What a request says about its own signature.
#[derive(Debug)]
struct Signed {
    access_key: String,
    /// `20260101/us-east-1/kinesis/aws4_request`
    scope: String,
    signed_headers: Vec<String>,
    signature: String,
    amz_date: String,
    /// Presigned: the signature travels in the query.
    in_query: bool,
}

impl Signed {
    /// The signature material of a request, worded as AWS words what is missing: every
    /// missing part named in one `IncompleteSignatureException`. `None` when the request carries
    /// none (neither an `Authorization` header nor `X-Amz-Algorithm` in the query).
    fn from_request(uri: &Uri, headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let header = |name: &str| {
            headers
                .get(name)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        };
        let query: HashMap<String, String> = query_pairs(uri).into_iter().collect();
        let auth = header(header::AUTHORIZATION.as_str());
        let in_query = query.contains_key("X-Amz-Algorithm");
        if auth.is_some() && in_query {
            return Err(ApiError::new(
                ErrorKind::InvalidSignature,
                "Found both 'X-Amz-Algorithm' as a query-string param and 'Authorization' as HTTP header.",
            ));
        }
        if let Some(auth) = auth {
            let mut parts: HashMap<&str, &str> = HashMap::new();
            // Every `key=value` part after the algorithm (which has no `=`), however spaced.
            for part in auth.split([',', ' ']) {
                if let Some((key, value)) = part.trim().split_once('=') {
                    parts.insert(key, value);
                }
            }
            let mut missing = String::new();
            for name in ["Credential", "Signature", "SignedHeaders"] {
                if parts.get(name).is_none_or(|v| v.is_empty()) {
                    missing.push_str(&format!(
                        "Authorization header requires '{name}' parameter. "
                    ));
                }
            }
            let amz_date = header("x-amz-date");
            if amz_date.is_none() && header("date").is_none() {
                missing.push_str("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. ");
            }
            if !missing.is_empty() {
                return Err(ApiError::new(
                    ErrorKind::IncompleteSignature,
                    format!("{missing}Authorization={auth}"),
                ));
            }
            if !auth.starts_with(ALGORITHM) {
                return Err(ApiError::new(
                    ErrorKind::IncompleteSignature,
                    format!(
                        "Unsupported AWS 'algorithm': '{}'",
                        auth.split(' ').next().unwrap_or_default()
                    ),
                ));
            }
            let (access_key, scope) = split_credential(parts["Credential"])?;
            return Ok(Some(Self {
                access_key,
                scope,
                signed_headers: parts["SignedHeaders"]
                    .split(';')
                    .map(str::to_string)
                    .collect(),
                signature: parts["Signature"].to_string(),
                amz_date: amz_date.or_else(|| header("date")).unwrap_or_default(),
                in_query: false,
            }));
        }
        if !in_query {
            return Ok(None);
        }
        let mut missing = String::new();
        for name in [
            "X-Amz-Algorithm",
            "X-Amz-Credential",
            "X-Amz-Signature",
            "X-Amz-SignedHeaders",
            "X-Amz-Date",
        ] {
            if query.get(name).is_none_or(|v| v.is_empty()) {
                missing.push_str(&format!(
                    "AWS query-string parameters must include '{name}'. "
                ));
            }
        }
        if !missing.is_empty() {
            return Err(ApiError::new(
                ErrorKind::IncompleteSignature,
                format!("{missing}Re-examine the query-string parameters."),
            ));
        }
        let (access_key, scope) = split_credential(&query["X-Amz-Credential"])?;
        Ok(Some(Self {
            access_key,
            scope,
            signed_headers: query["X-Amz-SignedHeaders"]
                .split(';')
                .map(str::to_string)
                .collect(),
            signature: query["X-Amz-Signature"].clone(),
            amz_date: query["X-Amz-Date"].clone(),
            in_query: true,
        }))
    }
}

/// `AKID/20260101/us-east-1/kinesis/aws4_request` into the key id and the scope.
fn split_credential(credential: &str) -> Result<(String, String), ApiError> {
    let (key, scope) = credential.split_once('/').ok_or_else(|| {
        ApiError::new(
            ErrorKind::IncompleteSignature,
            format!("Credential '{credential}' is not of the form <key>/<date>/<region>/<service>/aws4_request"),
        )
    })?;
    if scope.split('/').count() != 4 || !scope.ends_with("/aws4_request") {
        return Err(ApiError::new(
            ErrorKind::IncompleteSignature,
            format!("Credential should be scoped to a valid region and service: '{scope}'"),
        ));
    }
    Ok((key.to_string(), scope.to_string()))
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Refuses a request dated more than 15 minutes from `now`.
fn check_skew(amz_date: &str, now: i64) -> Result<(), ApiError> {
    let Some(time) = parse_amz_date(amz_date) else {
        return Err(ApiError::new(
            ErrorKind::IncompleteSignature,
            format!("X-Amz-Date '{amz_date}' is not of the form YYYYMMDDTHHMMSSZ"),
        ));
    };
    if (time - now).abs() > MAX_SKEW_SECONDS {
        return Err(ApiError::new(
            ErrorKind::InvalidSignature,
            format!("Signature expired: {amz_date} is not within 15 minutes of the server's time"),
        ));
    }
    Ok(())
}

/// `20260101T120000Z` as seconds since the epoch.
fn parse_amz_date(text: &str) -> Option<i64> {
    let b = text.as_bytes();
    if b.len() != 16 || b[8] != b'T' || b[15] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| text.get(range)?.parse::<i64>().ok();
    let (year, month, day) = (num(0..4)?, num(4..6)?, num(6..8)?);
    let (hour, minute, second) = (num(9..11)?, num(11..13)?, num(13..15)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    // Days from civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(days * 86_400 + hour * 3600 + minute * 60 + second)
}

/// The decoded query's (name, value) pairs.
fn query_pairs(uri: &Uri) -> Vec<(String, String)> {
    uri.query()
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn canonical_request(
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    body: &[u8],
    signed: &Signed,
) -> Result<String, ApiError> {
    let path = uri.path();
    let canonical_path = if path.is_empty() {
        "/".to_string()
    } else {
        path.split('/')
            .map(|segment| uri_encode(&percent_decode(segment), true))
            .collect::<Vec<_>>()
            .join("/")
    };
    let mut query: Vec<(String, String)> = query_pairs(uri)
        .into_iter()
        .filter(|(k, _)| !(signed.in_query && k == "X-Amz-Signature"))
        .map(|(k, v)| (uri_encode(&k, true), uri_encode(&v, true)))
        .collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    let mut canonical_headers = String::new();
    for name in &signed.signed_headers {
        let mut values: Vec<String> = headers
            .get_all(name.as_str())
            .iter()
            .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
            .collect();
        // Over HTTP/2 the host travels as the `:authority` pseudo-header, which the server
        // keeps in the URI; clients sign it as `host` or as `:authority`.
        if values.is_empty() && matches!(name.as_str(), "host" | ":authority") {
            values.extend(uri.authority().map(|a| a.as_str().to_string()));
        }
        if values.is_empty() {
            return Err(ApiError::new(
                ErrorKind::InvalidSignature,
                format!("the signed header '{name}' is not in the request"),
            ));
        }
        canonical_headers.push_str(&format!("{name}:{}\n", values.join(",")));
    }
    // The body is hashed here, never taken from the client's word: a header that names another
    // hash is refused, so a signed request's body cannot be swapped for another. Only a client
    // that signed `UNSIGNED-PAYLOAD` (as presigned URLs do) leaves its body unprotected.
    let body_hash = hex(digest::digest(&digest::SHA256, body).as_ref());
    let payload_hash = match headers
        .get("x-amz-content-sha256")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
    {
        Some(hash) if hash == UNSIGNED_PAYLOAD => hash,
        Some(hash) if !hash.eq_ignore_ascii_case(&body_hash) => {
            return Err(ApiError::new(
                ErrorKind::InvalidSignature,
                "The provided 'x-amz-content-sha256' header does not match what was computed.",
            ));
        }
        Some(_) => body_hash,
        None if signed.in_query => UNSIGNED_PAYLOAD.to_string(),
        None => body_hash,
    };
    Ok(format!(
        "{method}\n{canonical_path}\n{canonical_query}\n{canonical_headers}\n{}\n{payload_hash}",
        signed.signed_headers.join(";")
    ))
}

/// The signature of `canonical` for `scope` and `amz_date` with `secret`.
fn signature(secret: &str, scope: &str, amz_date: &str, canonical: &str) -> Vec<u8> {
    let string_to_sign = format!(
        "{ALGORITHM}\n{amz_date}\n{scope}\n{}",
        hex(digest::digest(&digest::SHA256, canonical.as_bytes()).as_ref())
    );
    let mut key = format!("AWS4{secret}").into_bytes();
    for part in scope.split('/') {
        key = hmac::sign(&hmac::Key::new(hmac::HMAC_SHA256, &key), part.as_bytes())
            .as_ref()
            .to_vec();
    }
    hmac::sign(
        &hmac::Key::new(hmac::HMAC_SHA256, &key),
        string_to_sign.as_bytes(),
    )
    .as_ref()
    .to_vec()
}

/// The headers that sign a JSON 1.1 `POST /` request to an AWS service as a client would:
/// `X-Amz-Date`, `X-Amz-Content-Sha256` and `Authorization`, for `host` (as sent in the Host
/// header), `target` (`X-Amz-Target`) and `body`, with access key `key_id`/`secret` in `region`
/// for `service` (`kinesis`, `firehose`), at `unix_seconds`.
#[allow(clippy::too_many_arguments)]
pub fn sign_json_post(
    host: &str,
    target: &str,
    body: &[u8],
    (key_id, secret): (&str, &str),
    region: &str,
    service: &str,
    content_type: &str,
    unix_seconds: i64,
) -> Vec<(&'static str, String)> {
    let time = chrono::DateTime::from_timestamp(unix_seconds, 0).unwrap_or_default();
    let amz_date = time.format("%Y%m%dT%H%M%SZ").to_string();
    let scope = format!("{}/{region}/{service}/aws4_request", &amz_date[..8]);
    let payload_hash = hex(digest::digest(&digest::SHA256, body).as_ref());
    let signed_headers = "content-type;host;x-amz-content-sha256;x-amz-date;x-amz-target";
    let canonical = format!(
        "POST\n/\n\ncontent-type:{content_type}\nhost:{host}\nx-amz-content-sha256:{payload_hash}\nx-amz-date:{amz_date}\nx-amz-target:{target}\n\n{signed_headers}\n{payload_hash}"
    );
    let signature = hex(&signature(secret, &scope, &amz_date, &canonical));
    vec![
        ("x-amz-date", amz_date),
        ("x-amz-content-sha256", payload_hash),
        (
            "authorization",
            format!(
                "{ALGORITHM} Credential={key_id}/{scope}, SignedHeaders={signed_headers}, Signature={signature}"
            ),
        ),
    ]
}

fn collapse_spaces(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// AWS's URI encoding: every byte but unreserved characters as `%XX` (uppercase).
fn uri_encode(text: &str, encode_slash: bool) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) || (b == b'/' && !encode_slash) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(byte) = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_signed_as_a_client_signs_it_verifies() {
        let body = br#"{"StreamName":"s"}"#;
        let now = now_seconds();
        let signed = sign_json_post(
            "127.0.0.1:4567",
            "Kinesis_20131202.PutRecords",
            body,
            ("AKID", "secret"),
            "us-east-1",
            "kinesis",
            "application/x-amz-json-1.1",
            now,
        );
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:4567".parse().expect("header"));
        headers.insert(
            "content-type",
            "application/x-amz-json-1.1".parse().expect("header"),
        );
        headers.insert(
            "x-amz-target",
            "Kinesis_20131202.PutRecords".parse().expect("header"),
        );
        for (name, value) in signed {
            headers.insert(name, value.parse().expect("header"));
        }
        let keys = Authorizer::open().with_password("AKID", "secret");
        let uri: Uri = "/".parse().expect("uri");
        verify(&keys, &Method::POST, &uri, &headers, body).expect("a client's signature verifies");
        let wrong = Authorizer::open().with_password("AKID", "other");
        assert!(verify(&wrong, &Method::POST, &uri, &headers, body).is_err());
        // The same headers (signature and content hash intact) with another body.
        let tampered = br#"{"StreamName":"t"}"#;
        let error = verify(&keys, &Method::POST, &uri, &headers, tampered)
            .expect_err("a changed body is refused");
        assert_eq!(error.kind, ErrorKind::InvalidSignature);
        assert!(
            error.message.contains("x-amz-content-sha256"),
            "{}",
            error.message
        );
        // Without the hash header, the body's own hash is signed: the signature fails.
        headers.remove("x-amz-content-sha256");
        let error = verify(&keys, &Method::POST, &uri, &headers, tampered)
            .expect_err("a changed body is refused");
        assert_eq!(error.kind, ErrorKind::InvalidSignature);
    }

    /// AWS's own worked example (IAM ListUsers, 2015-08-30), from the SigV4 documentation.
    #[test]
    fn the_documented_example_signs_to_the_documented_signature() {
        let canonical = "GET\n/\nAction=ListUsers&Version=2010-05-08\ncontent-type:application/x-www-form-urlencoded; charset=utf-8\nhost:iam.amazonaws.com\nx-amz-date:20150830T123600Z\n\ncontent-type;host;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        let signature = signature(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830/us-east-1/iam/aws4_request",
            "20150830T123600Z",
            canonical,
        );
        assert_eq!(
            hex(&signature),
            "5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
        );
    }

    #[test]
    fn a_request_is_rebuilt_canonically_and_checked() {
        let keys = Authorizer::open()
            .with_password("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY");
        let uri: Uri = "/?Version=2010-05-08&Action=ListUsers"
            .parse()
            .expect("uri");
        let amz_date = "20150830T123600Z";
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded; charset=utf-8"
                .parse()
                .expect("header"),
        );
        headers.insert(header::HOST, "iam.amazonaws.com".parse().expect("header"));
        headers.insert("x-amz-date", amz_date.parse().expect("header"));
        headers.insert(
            header::AUTHORIZATION,
            "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
                .parse()
                .expect("header"),
        );
        let signed = Signed::from_request(&uri, &headers)
            .expect("parses")
            .expect("signed");
        let canonical =
            canonical_request(&Method::GET, &uri, &headers, b"", &signed).expect("canonical");
        let expected = signature(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            &signed.scope,
            amz_date,
            &canonical,
        );
        assert_eq!(hex(&expected), signed.signature);
        // The whole check, except that 2015 is far outside the allowed clock skew.
        let error =
            verify(&keys, &Method::GET, &uri, &headers, b"").expect_err("the date is too old");
        assert_eq!(error.kind, ErrorKind::InvalidSignature);
        assert!(
            error.message.contains("Signature expired"),
            "{}",
            error.message
        );

        let unknown = Authorizer::open().with_password("OTHER", "x");
        let error = verify(&unknown, &Method::GET, &uri, &headers, b"").expect_err("unknown key");
        assert_eq!(error.kind, ErrorKind::UnrecognizedClient);
    }

    #[test]
    fn amz_dates_parse_to_epoch_seconds() {
        assert_eq!(parse_amz_date("19700101T000000Z"), Some(0));
        assert_eq!(parse_amz_date("20260101T000000Z"), Some(1_767_225_600));
        assert_eq!(parse_amz_date("2026-01-01"), None);
    }
}
