//! Query and body decoding shared by the agent's handlers, with Go's and Consul's rules
//! (`strconv.ParseBool` for flags, case-insensitive JSON bodies).
//!
//! Owns: turning request parts into values or 400s. Must not touch: what the values mean.

use registry_api::{decode, Error as ApiError};

/// The value of a query parameter, if present.
pub(super) fn value<'a>(q: &'a [(String, String)], key: &str) -> Option<&'a str> {
    q.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
}

/// Go's `strconv.ParseBool`, which Consul uses for `?enable=`.
pub(super) fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// A flag parameter (`?replace-existing-checks`): present and empty or true.
pub(super) fn flag(q: &[(String, String)], key: &str) -> Result<bool, ApiError> {
    match value(q, key) {
        None => Ok(false),
        Some("") => Ok(true),
        Some(v) => {
            parse_bool(v).ok_or_else(|| ApiError::BadRequest(format!("Invalid value for {key}")))
        }
    }
}

/// `?enable=` of the maintenance endpoints: required, a Go bool.
pub(super) fn enable_param(q: &[(String, String)]) -> Result<bool, ApiError> {
    let text = value(q, "enable")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| ApiError::BadRequest("Missing value for enable".into()))?;
    parse_bool(text)
        .ok_or_else(|| ApiError::BadRequest(format!("Invalid value for enable: {text:?}")))
}

/// Decodes a JSON body case-insensitively; an empty body is the default value.
pub(super) fn body<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    decode::from_slice(bytes).map_err(ApiError::BadRequest)
}

/// Decodes a required JSON body.
pub(super) fn required_body<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::BadRequest("Request body is empty".into()));
    }
    decode::from_slice(bytes).map_err(ApiError::BadRequest)
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bools_parse_like_go() {
        assert_eq!(parse_bool("true"), Some(true));
        assert_eq!(parse_bool("F"), Some(false));
        assert_eq!(parse_bool("yes"), None);
        let q = vec![("replace-existing-checks".to_string(), String::new())];
        assert!(flag(&q, "replace-existing-checks").unwrap());
        assert!(!flag(&[], "replace-existing-checks").unwrap());
        assert!(enable_param(&[]).is_err());
    }
}
