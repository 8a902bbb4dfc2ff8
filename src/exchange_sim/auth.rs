//! Who may call the simulated EWS: bearer tokens (issued by its own OAuth client-credentials
//! endpoint, with a lifetime, or configured as static), Basic credentials. And the token
//! endpoint's rules, as Azure AD answers: `invalid_client` (401), `unsupported_grant_type`,
//! `invalid_scope`, `invalid_request` (400). Pure apart from the token table it is given.

use std::time::{Duration, Instant};

use subtle::ConstantTimeEq;

use super::codec::base64_decode;
use super::ews::Identity;
use super::options::SimOptions;
use super::state::Tokens;

/// What an `Authorization` header is worth.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Authentication {
    Accepted(Identity),
    /// No credentials, unknown token, wrong password: 401.
    Refused(&'static str),
    /// A token this simulator issued, now expired: 401 with the reason.
    Expired,
}

fn equal(a: &str, b: &str) -> bool {
    a.as_bytes().ct_eq(b.as_bytes()).into()
}

pub fn authenticate(
    header: Option<&str>,
    options: &SimOptions,
    tokens: &Tokens,
    now: Instant,
) -> Authentication {
    let Some(header) = header.map(str::trim) else {
        return Authentication::Refused("no credentials");
    };
    let (scheme, value) = header.split_once(' ').unwrap_or((header, ""));
    let value = value.trim();
    if scheme.eq_ignore_ascii_case("Bearer") {
        if options.static_tokens.iter().any(|t| equal(t, value)) {
            return Authentication::Accepted(Identity::App);
        }
        return match tokens.issued.get(value) {
            Some(expiry) if now < *expiry => Authentication::Accepted(Identity::App),
            Some(_) => Authentication::Expired,
            None => Authentication::Refused("unknown token"),
        };
    }
    if scheme.eq_ignore_ascii_case("Basic") {
        let Some((user, password)) = options.basic.as_ref() else {
            return Authentication::Refused("basic authentication is not enabled");
        };
        let decoded = base64_decode(value)
            .and_then(|bytes| String::from_utf8(bytes).ok())
            .unwrap_or_default();
        let (given_user, given_password) = decoded.split_once(':').unwrap_or(("", ""));
        // The user name compares without regard to case, as Active Directory does.
        if given_user.eq_ignore_ascii_case(user) & equal(given_password, password) {
            return Authentication::Accepted(Identity::User(user.clone()));
        }
        return Authentication::Refused("wrong user name or password");
    }
    Authentication::Refused("unsupported authentication scheme")
}

/// Percent-decoding of `application/x-www-form-urlencoded` (`+` is a space).
pub fn form_decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = text.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

pub fn form_fields(body: &str) -> Option<Vec<(String, String)>> {
    body.split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            Some((form_decode(name)?, form_decode(value)?))
        })
        .collect()
}

/// The token endpoint's verdict on a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenGrant {
    /// Issue a token for this client.
    Grant,
    /// HTTP status, AAD error code, description.
    Refuse(u16, &'static str, String),
}

/// Checks a client-credentials request as Azure AD does.
pub fn check_token_request(fields: &[(String, String)], options: &SimOptions) -> TokenGrant {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    };
    match field("grant_type") {
        Some("client_credentials") => {}
        Some(other) => {
            return TokenGrant::Refuse(
                400,
                "unsupported_grant_type",
                format!("AADSTS70003: The app requested an unsupported grant type '{other}'."),
            )
        }
        None => return TokenGrant::Refuse(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'grant_type'."
                .into(),
        ),
    }
    let Some(client_id) = field("client_id") else {
        return TokenGrant::Refuse(
            400,
            "invalid_request",
            "AADSTS900144: The request body must contain the following parameter: 'client_id'."
                .into(),
        );
    };
    let secret = field("client_secret").unwrap_or_default();
    let known = options
        .oauth_clients
        .iter()
        .any(|(id, s)| id == client_id && equal(s, secret));
    if !known {
        return TokenGrant::Refuse(
            401,
            "invalid_client",
            "AADSTS7000215: Invalid client secret provided.".into(),
        );
    }
    match field("scope") {
        Some(scope) if scope.ends_with("/.default") => TokenGrant::Grant,
        _ => TokenGrant::Refuse(
            400,
            "invalid_scope",
            "AADSTS1002012: The provided value for scope is not valid. Client credential flows must have a scope value with /.default suffixed to the resource identifier (application ID URI)."
                .into(),
        ),
    }
}

/// Issues a token valid for `lifetime`; answers `(token, expires_in seconds)`.
pub fn issue(tokens: &mut Tokens, random: u64, lifetime: Duration, now: Instant) -> (String, u64) {
    tokens.count += 1;
    let token = format!("sim-{:016x}{:08x}", random, tokens.count);
    tokens.issued.insert(token.clone(), now + lifetime);
    // Drop long-expired tokens so a long run does not grow without bound.
    tokens
        .issued
        .retain(|_, expiry| now < *expiry + Duration::from_secs(3600));
    (token, lifetime.as_secs().max(1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exchange_sim::codec::base64_encode;

    fn options() -> SimOptions {
        SimOptions {
            static_tokens: vec!["static-1".into()],
            basic: Some(("svc@contoso.com".into(), "pa:ss".into())),
            oauth_clients: vec![("app".into(), "secret".into())],
            ..SimOptions::default()
        }
    }

    #[test]
    fn credentials_are_checked() {
        let options = options();
        let mut tokens = Tokens::default();
        let now = Instant::now();
        let check =
            |h: Option<&str>, tokens: &Tokens, at: Instant| authenticate(h, &options, tokens, at);
        assert_eq!(
            check(Some("Bearer static-1"), &tokens, now),
            Authentication::Accepted(Identity::App)
        );
        assert!(matches!(
            check(None, &tokens, now),
            Authentication::Refused(_)
        ));
        assert!(matches!(
            check(Some("Bearer other"), &tokens, now),
            Authentication::Refused(_)
        ));
        let (token, expires_in) = issue(&mut tokens, 5, Duration::from_secs(2), now);
        assert_eq!(expires_in, 2);
        let header = format!("Bearer {token}");
        assert_eq!(
            check(Some(&header), &tokens, now),
            Authentication::Accepted(Identity::App)
        );
        assert_eq!(
            check(Some(&header), &tokens, now + Duration::from_secs(3)),
            Authentication::Expired
        );
        let basic = format!("Basic {}", base64_encode(b"SVC@contoso.com:pa:ss"));
        assert_eq!(
            check(Some(&basic), &tokens, now),
            Authentication::Accepted(Identity::User("svc@contoso.com".into()))
        );
        let wrong = format!("Basic {}", base64_encode(b"svc@contoso.com:nope"));
        assert!(matches!(
            check(Some(&wrong), &tokens, now),
            Authentication::Refused(_)
        ));
    }

    #[test]
    fn token_requests_are_checked_as_azure_ad_does() {
        let options = options();
        let grant = |body: &str| check_token_request(&form_fields(body).unwrap(), &options);
        assert_eq!(
            grant("grant_type=client_credentials&client_id=app&client_secret=secret&scope=https%3A%2F%2Foutlook.office365.com%2F.default"),
            TokenGrant::Grant
        );
        assert!(matches!(
            grant("grant_type=client_credentials&client_id=app&client_secret=bad&scope=x/.default"),
            TokenGrant::Refuse(401, "invalid_client", _)
        ));
        assert!(matches!(
            grant("grant_type=password&client_id=app&client_secret=secret"),
            TokenGrant::Refuse(400, "unsupported_grant_type", _)
        ));
        assert!(matches!(
            grant("grant_type=client_credentials&client_id=app&client_secret=secret&scope=https://outlook.office365.com/EWS.AccessAsUser.All"),
            TokenGrant::Refuse(400, "invalid_scope", _)
        ));
        assert_eq!(form_decode("a+b%2Fc"), Some("a b/c".into()));
        assert_eq!(form_decode("%zz"), None);
    }
}
