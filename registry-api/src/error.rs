//! The error type of the HTTP API. Every server-side failure is one of these,
//! and each maps to exactly one status code ([`Error::status`]); the servers turn
//! them into responses in one place.

/// Consul's texts for the well-known failures (clients match on them).
pub const NO_LEADER: &str = "No cluster leader";
/// See [`NO_LEADER`].
pub const NO_PATH_TO_DC: &str = "No path to datacenter";
/// See [`NO_LEADER`].
pub const REMOTE_DC_UNREACHABLE: &str = "Remote DC has no server currently reachable";

/// A failed API request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Malformed or invalid input (400).
    #[error("{0}")]
    BadRequest(String),
    /// ACLs are off and the request needs them (401, Consul's `ACL support disabled`).
    #[error("{0}")]
    Unauthorized(String),
    /// A token was denied (403).
    #[error("{0}")]
    Forbidden(String),
    /// A missing key or id (404).
    #[error("{0}")]
    NotFound(String),
    /// Wrong method for the path (405); carries the allowed methods.
    #[error("method not allowed")]
    MethodNotAllowed(Vec<&'static str>),
    /// Request body over the limit (413).
    #[error("{0}")]
    TooLarge(String),
    /// A bounded resource is in use to its limit; try again later (429), with the reason.
    #[error("{0}")]
    TooManyRequests(String),
    /// The server cannot take this request now, for a reason it names (503, with
    /// `Retry-After: 1`): writes while its data directory is short of space. Reads still
    /// work; retry once the reason is gone.
    #[error("{0}")]
    Unavailable(String),
    /// No leader is known or reachable (500 `No cluster leader`).
    #[error("No cluster leader")]
    NoLeader,
    /// Any other failure (500) with a plain-text reason.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// The HTTP status code for this error.
    pub fn status(&self) -> u16 {
        match self {
            Error::BadRequest(_) => 400,
            Error::Unauthorized(_) => 401,
            Error::Forbidden(_) => 403,
            Error::NotFound(_) => 404,
            Error::MethodNotAllowed(_) => 405,
            Error::TooLarge(_) => 413,
            Error::TooManyRequests(_) => 429,
            Error::Unavailable(_) => 503,
            Error::NoLeader | Error::Internal(_) => 500,
        }
    }
}
