//! One authorizer for every way into a Sluice server: Arrow Flight / Flight SQL, the AWS HTTP
//! APIs (Kinesis, Firehose, Glue, kinesisanalytics) and `GET /metrics` all ask the same
//! [`Authorizer`], so a server started with credentials is closed on every port, not only on
//! the one whose flag was given.
//!
//! It holds one set of credentials, and each surface takes them in its own form:
//! - a **bearer token** (`--token`): `authorization: Bearer <token>` on Flight and `/metrics`;
//! - **users and passwords** (`--user`/`--password`, and AWS access keys, whose id is the user
//!   and whose secret is the password): `authorization: Basic …` on Flight and `/metrics`, and
//!   SigV4 signatures on the AWS APIs, checked against the secret of the signing key.
//!
//! With nothing configured the authorizer is open (the local-development default: `sluice
//! serve` binds 127.0.0.1), and every surface accepts any caller. Secrets are compared in
//! constant time (`subtle`), so how long a refusal takes says nothing of where a guess went
//! wrong.
//!
//! # Example
//!
//! ```
//! use sluice_auth::{Authorizer, Denied};
//!
//! let auth = Authorizer::open().with_token("t0ken").with_password("AKIDEXAMPLE", "secret");
//! assert!(auth.check_header(Some("Bearer t0ken")).is_ok());
//! assert_eq!(auth.check_header(Some("Bearer guess")), Err(Denied::InvalidToken));
//! assert_eq!(auth.signing_secret("AKIDEXAMPLE"), Ok(Some("secret")));
//! assert!(Authorizer::open().check_header(None).is_ok());
//! ```

use std::collections::HashMap;

use base64::Engine as _;

/// Who may call a Sluice server, and how each surface checks it.
#[derive(Clone, Default)]
pub struct Authorizer {
    token: Option<String>,
    /// Handed out by a Flight handshake: the token, or one made at start when only users are
    /// configured.
    session_token: Option<String>,
    /// User → password. An AWS access key is a user whose password is its secret key.
    passwords: HashMap<String, String>,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print a secret.
        let mut users: Vec<&String> = self.passwords.keys().collect();
        users.sort();
        f.debug_struct("Authorizer")
            .field("token", &self.token.as_ref().map(|_| "…"))
            .field("users", &users)
            .finish()
    }
}

/// Why a caller was refused; its text is what the caller is told.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Denied {
    /// No credentials on a request to a closed server; says which form is expected.
    Missing { token_expected: bool },
    /// A bearer token that is not the server's.
    InvalidToken,
    /// Basic credentials that name no user, or the wrong password.
    WrongPassword,
    /// Basic credentials sent to a server that only takes a token.
    PasswordsNotAccepted,
    /// An `authorization` value in no form this server reads.
    UnknownScheme,
    /// A signing key (AWS access key id) this server does not know.
    UnknownKey,
}

impl std::fmt::Display for Denied {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Denied::Missing {
                token_expected: true,
            } => f.write_str(
                "this server requires authentication: send 'authorization: Bearer <token>'",
            ),
            Denied::Missing {
                token_expected: false,
            } => f.write_str(
                "this server requires authentication: send 'authorization: Basic <base64 of user:password>'",
            ),
            Denied::InvalidToken => f.write_str("the bearer token is not valid"),
            Denied::WrongPassword => f.write_str("wrong user or password"),
            Denied::PasswordsNotAccepted => {
                f.write_str("this server takes a bearer token, not a user and password")
            }
            Denied::UnknownScheme => f.write_str(
                "the authorization header is neither 'Bearer <token>' nor 'Basic <base64 of user:password>'",
            ),
            Denied::UnknownKey => f.write_str("the access key id is not known to this server"),
        }
    }
}

impl std::error::Error for Denied {}

impl Authorizer {
    /// Accepts every caller: nothing is configured.
    pub fn open() -> Self {
        Self::default()
    }

    /// Requires `authorization: Bearer <token>` (or a configured user's credentials).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        let token = token.into();
        self.session_token = Some(token.clone());
        self.token = Some(token);
        self
    }

    /// Accepts `user` with `password`: Basic credentials on Flight and `/metrics`, and, as an
    /// AWS access key id and secret key, SigV4 signatures on the AWS APIs.
    pub fn with_password(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        if self.session_token.is_none() {
            self.session_token = Some(uuid::Uuid::new_v4().simple().to_string());
        }
        self.passwords.insert(user.into(), password.into());
        self
    }

    /// Whether every caller is accepted.
    pub fn is_open(&self) -> bool {
        self.token.is_none() && self.passwords.is_empty()
    }

    /// The token a successful Flight handshake hands out; `None` when open.
    pub fn session_token(&self) -> Option<&str> {
        self.session_token.as_deref()
    }

    /// Checks an HTTP or gRPC `authorization` value: `Bearer <token>` or `Basic <base64>`.
    pub fn check_header(&self, authorization: Option<&str>) -> Result<(), Denied> {
        if self.is_open() {
            return Ok(());
        }
        let value = authorization.map(str::trim).unwrap_or("");
        if value.is_empty() {
            return Err(Denied::Missing {
                token_expected: self.token.is_some(),
            });
        }
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if scheme.eq_ignore_ascii_case("bearer") {
            // The session token is the configured one, or the one a Basic handshake handed out.
            return match &self.session_token {
                Some(expected) if same(rest.trim(), expected) => Ok(()),
                _ => Err(Denied::InvalidToken),
            };
        }
        if scheme.eq_ignore_ascii_case("basic") {
            if self.passwords.is_empty() {
                return Err(Denied::PasswordsNotAccepted);
            }
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(rest.trim())
                .ok()
                .and_then(|b| String::from_utf8(b).ok())
                .unwrap_or_default();
            let (user, password) = decoded.split_once(':').unwrap_or(("", ""));
            return if self.password_matches(user, password) {
                Ok(())
            } else {
                Err(Denied::WrongPassword)
            };
        }
        Err(Denied::UnknownScheme)
    }

    /// The secret a SigV4 signature by `access_key` must be made with: `Ok(None)` when open
    /// (any well-formed signature is accepted), `Err(UnknownKey)` for a key not configured.
    pub fn signing_secret(&self, access_key: &str) -> Result<Option<&str>, Denied> {
        if self.is_open() {
            return Ok(None);
        }
        self.passwords
            .get(access_key)
            .map(|secret| Some(secret.as_str()))
            .ok_or(Denied::UnknownKey)
    }

    /// Compares `password` with `user`'s in constant time; an unknown user is compared with a
    /// placeholder so that it takes as long as a known one.
    fn password_matches(&self, user: &str, password: &str) -> bool {
        match self.passwords.get(user) {
            Some(expected) => same(password, expected),
            None => {
                let _ = same(password, "sluice-no-such-user-placeholder");
                false
            }
        }
    }
}

/// Whether two secrets are equal, in time that does not depend on where they differ.
fn same(given: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    given.as_bytes().ct_eq(expected.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn basic(user: &str, password: &str) -> String {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
    }

    #[test]
    fn an_open_authorizer_accepts_anything_and_hands_out_no_token() {
        let auth = Authorizer::open();
        assert!(auth.is_open());
        assert_eq!(auth.check_header(None), Ok(()));
        assert_eq!(auth.check_header(Some("Bearer whatever")), Ok(()));
        assert_eq!(auth.signing_secret("AKID"), Ok(None));
        assert_eq!(auth.session_token(), None);
    }

    #[test]
    fn a_token_is_required_and_checked() {
        let auth = Authorizer::open().with_token("t0ken");
        assert!(!auth.is_open());
        assert_eq!(
            auth.check_header(None),
            Err(Denied::Missing {
                token_expected: true
            })
        );
        assert_eq!(auth.check_header(Some("Bearer t0ken")), Ok(()));
        assert_eq!(auth.check_header(Some("bearer  t0ken ")), Ok(()));
        assert_eq!(
            auth.check_header(Some("Bearer t0ke")),
            Err(Denied::InvalidToken)
        );
        assert_eq!(
            auth.check_header(Some(&basic("u", "p"))),
            Err(Denied::PasswordsNotAccepted)
        );
        assert_eq!(
            auth.check_header(Some("Digest x")),
            Err(Denied::UnknownScheme)
        );
        // No AWS key is configured: every signature is refused, the server being closed.
        assert_eq!(auth.signing_secret("AKID"), Err(Denied::UnknownKey));
        assert_eq!(auth.session_token(), Some("t0ken"));
    }

    #[test]
    fn users_are_checked_as_basic_credentials_and_as_signing_keys() {
        let auth = Authorizer::open()
            .with_password("ada", "pw")
            .with_password("AKIDEXAMPLE", "secret");
        assert_eq!(auth.check_header(Some(&basic("ada", "pw"))), Ok(()));
        assert_eq!(
            auth.check_header(Some(&basic("AKIDEXAMPLE", "secret"))),
            Ok(())
        );
        assert_eq!(
            auth.check_header(Some(&basic("ada", "PW"))),
            Err(Denied::WrongPassword)
        );
        assert_eq!(
            auth.check_header(Some(&basic("bob", "pw"))),
            Err(Denied::WrongPassword)
        );
        assert_eq!(
            auth.check_header(Some("Basic not-base64!")),
            Err(Denied::WrongPassword)
        );
        assert_eq!(
            auth.check_header(None),
            Err(Denied::Missing {
                token_expected: false
            })
        );
        assert_eq!(auth.signing_secret("AKIDEXAMPLE"), Ok(Some("secret")));
        assert_eq!(auth.signing_secret("ada"), Ok(Some("pw")));
        assert_eq!(auth.signing_secret("AKIDOTHER"), Err(Denied::UnknownKey));
        // The handshake's token, made at start, is then accepted as a bearer token.
        let session = auth.session_token().expect("a session token").to_string();
        assert_eq!(
            auth.check_header(Some(&format!("Bearer {session}"))),
            Ok(())
        );
        assert_eq!(
            auth.check_header(Some("Bearer guess")),
            Err(Denied::InvalidToken)
        );
    }

    #[test]
    fn debug_output_names_users_but_never_secrets() {
        let auth = Authorizer::open()
            .with_token("t0ken")
            .with_password("ada", "pw");
        let printed = format!("{auth:?}");
        assert!(printed.contains("ada"), "{printed}");
        assert!(
            !printed.contains("t0ken") && !printed.contains("pw\""),
            "{printed}"
        );
    }
}
