//! Who is calling: the bearer token of a request, looked up in the token table, and its role checked against the
//! access a route needs. Used by the API's extractor and by the OTLP intake alike.

use gantry_proto::{Access, Role, TokenInfo};

use crate::state::tokens::TokenStore;

/// Why a caller may not go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token, a malformed header, or a token that does not exist (any more).
    #[error(
        "missing or invalid token: send `Authorization: Bearer gty_...` (create one with `gantry token create`)"
    )]
    Unauthorized,
    /// The token's role may not do this.
    #[error("a `{role}` token may not do this: use a token with a role that allows it")]
    Forbidden {
        /// The caller's role.
        role: Role,
    },
    /// The token could not be checked (the state database failed): a retry can succeed.
    #[error("the token could not be checked: {0}; retry shortly")]
    Unavailable(String),
}

/// The secret of an `Authorization: Bearer <token>` value. The scheme is case-insensitive (RFC 7235, section 2.1).
pub fn bearer(authorization: &str) -> Option<&str> {
    let (scheme, token) = authorization.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|token| !token.is_empty())
}

/// Checks an `Authorization` value against the token table and the access a route needs.
///
/// # Errors
/// [`AuthError`]: 401, 403, or 503 when the database cannot answer.
pub fn authorize(
    tokens: &TokenStore,
    authorization: Option<&str>,
    access: Access,
) -> Result<TokenInfo, AuthError> {
    let secret = authorization
        .and_then(bearer)
        .ok_or(AuthError::Unauthorized)?;
    let token = tokens
        .authenticate(secret)
        .map_err(|error| AuthError::Unavailable(error.to_string()))?
        .ok_or(AuthError::Unauthorized)?;
    if !token.role.allows(access) {
        return Err(AuthError::Forbidden { role: token.role });
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bearer_scheme_is_case_insensitive() {
        let check = |value: &str, expected: Option<&str>| {
            assert_eq!(bearer(value), expected, "{value:?}");
        };
        check("Bearer gty_a", Some("gty_a"));
        check("bearer gty_a", Some("gty_a"));
        check("BEARER  gty_a ", Some("gty_a"));
        check("Basic gty_a", None);
        check("Bearer", None);
        check("Bearer ", None);
        check("gty_a", None);
    }
}
