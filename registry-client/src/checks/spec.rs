//! Check definitions: what a Consul check definition asks for ([`CheckFields`]), validated
//! and normalised into a [`CheckSpec`] by [`parse_spec`] with Consul's rules and defaults.
//!
//! Owns: the definition types and their validation. Must not touch: running checks (that is
//! [`super::runner`]) or the agent's state; parsing here is pure, with no I/O.

use std::collections::BTreeMap;
use std::time::Duration;

/// Timeout of an HTTP, TCP or gRPC probe when the definition sets none (Consul: 10s).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Shortest interval the agent accepts; shorter ones are raised to it with a warning, as
/// Consul's agent does (`checks.MinInterval`).
pub const MIN_INTERVAL: Duration = Duration::from_secs(1);

/// What a check runs, parsed from a Consul check definition.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckKind {
    /// `HTTP`: 2xx is passing, 429 warning, anything else or an error critical.
    Http {
        /// Target URL (`http://` or `https://`).
        url: String,
        /// Request method; Consul's default is `GET`.
        method: String,
        /// Extra request headers, each with one or more values.
        headers: BTreeMap<String, Vec<String>>,
        /// Request body; empty sends none.
        body: String,
        /// `TLSSkipVerify`: accept any server certificate for `https` URLs.
        tls_skip_verify: bool,
    },
    /// `TCP`: passing when a connection to `host:port` opens within the timeout.
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// `GRPC`: the standard `grpc.health.v1.Health/Check` call.
    Grpc {
        /// `host:port`, or `host:port/service` to ask about one service.
        target: String,
        /// `GRPCUseTLS`: speak TLS (ALPN `h2`) instead of plaintext HTTP/2.
        use_tls: bool,
        /// `TLSSkipVerify`: with `use_tls`, accept any server certificate.
        tls_skip_verify: bool,
    },
    /// `TTL`: the application reports its own status and must do so within `ttl`.
    Ttl {
        /// How long a reported status stays valid.
        ttl: Duration,
    },
}

/// A check to run: what, how often, and how many results it takes to change status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckSpec {
    /// What to run.
    pub kind: CheckKind,
    /// Time between the end of one run and the start of the next; unused by TTL checks.
    pub interval: Duration,
    /// Limit on one run; zero means [`DEFAULT_TIMEOUT`], as in Consul.
    pub timeout: Duration,
    /// Consecutive successes needed to turn passing (0 counts as 1).
    pub success_before_passing: u32,
    /// Consecutive failures needed to turn critical (0 counts as 1).
    pub failures_before_critical: u32,
    /// Consecutive failures after which the check reports warning until it turns
    /// critical; 0 means the same as `failures_before_critical` (Consul >= 1.11).
    pub failures_before_warning: u32,
}

impl CheckSpec {
    /// A spec with Consul's defaults: [`DEFAULT_TIMEOUT`] and no thresholds.
    pub fn new(kind: CheckKind, interval: Duration) -> Self {
        CheckSpec {
            kind,
            interval,
            timeout: DEFAULT_TIMEOUT,
            success_before_passing: 0,
            failures_before_critical: 0,
            failures_before_warning: 0,
        }
    }

    /// The limit on one run: `timeout`, or [`DEFAULT_TIMEOUT`] when it is zero, as in Consul.
    pub fn effective_timeout(&self) -> Duration {
        if self.timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            self.timeout
        }
    }
}

/// The check fields of a Consul check definition that [`parse_spec`] reads, as received.
/// Durations are Go duration strings; an empty string means unset.
#[derive(Clone, Debug, Default)]
pub struct CheckFields<'a> {
    /// `HTTP`: URL of an HTTP check.
    pub http: &'a str,
    /// `Method`: HTTP method; empty means `GET`.
    pub method: &'a str,
    /// `Header`: HTTP request headers.
    pub headers: BTreeMap<String, Vec<String>>,
    /// `Body`: HTTP request body.
    pub body: &'a str,
    /// `TLSSkipVerify`: skip certificate verification for HTTPS and gRPC with TLS.
    pub tls_skip_verify: bool,
    /// `TCP`: `host:port` of a TCP check.
    pub tcp: &'a str,
    /// `GRPC`: `host:port[/service]` of a gRPC check.
    pub grpc: &'a str,
    /// `GRPCUseTLS`.
    pub grpc_use_tls: bool,
    /// `TTL`.
    pub ttl: &'a str,
    /// `Interval`.
    pub interval: &'a str,
    /// `Timeout`.
    pub timeout: &'a str,
    /// `SuccessBeforePassing`.
    pub success_before_passing: u32,
    /// `FailuresBeforeCritical`.
    pub failures_before_critical: u32,
    /// `FailuresBeforeWarning`.
    pub failures_before_warning: u32,
}

/// Turns Consul's check fields into a [`CheckSpec`], or a 400 text like Consul's.
///
/// The rules are Consul's `CheckType.Validate` and `Agent.addCheck`: interval checks need an
/// `Interval` (raised to [`MIN_INTERVAL`] if shorter), TTL checks need a positive `TTL`, the two
/// exclude each other, and the first kind set wins in Consul's order (TTL, HTTP, TCP, gRPC).
/// Method, headers and URL are not validated here: like Consul, a check whose request cannot
/// be built is registered and reports critical with the reason.
pub fn parse_spec(fields: &CheckFields<'_>) -> Result<CheckSpec, String> {
    let interval = optional_duration("Interval", fields.interval)?;
    let timeout = optional_duration("Timeout", fields.timeout)?;
    let ttl = optional_duration("TTL", fields.ttl)?;
    let interval_check =
        !fields.http.is_empty() || !fields.tcp.is_empty() || !fields.grpc.is_empty();

    if !interval.is_zero() && !ttl.is_zero() {
        return Err("Interval and TTL cannot both be specified".to_owned());
    }
    if interval_check && interval.is_zero() {
        return Err(
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or gRPC checks".to_owned(),
        );
    }
    if !interval_check && ttl.is_zero() {
        return Err("TTL must be > 0 for TTL checks".to_owned());
    }

    let kind = if !ttl.is_zero() {
        CheckKind::Ttl { ttl }
    } else if !fields.http.is_empty() {
        CheckKind::Http {
            url: fields.http.to_owned(),
            method: if fields.method.is_empty() {
                "GET"
            } else {
                fields.method
            }
            .to_owned(),
            headers: fields.headers.clone(),
            body: fields.body.to_owned(),
            tls_skip_verify: fields.tls_skip_verify,
        }
    } else if !fields.tcp.is_empty() {
        CheckKind::Tcp {
            addr: fields.tcp.to_owned(),
        }
    } else {
        CheckKind::Grpc {
            target: fields.grpc.to_owned(),
            use_tls: fields.grpc_use_tls,
            tls_skip_verify: fields.tls_skip_verify,
        }
    };

    let interval = if interval_check && interval < MIN_INTERVAL {
        tracing::warn!(
            interval = ?interval,
            minimum_interval = ?MIN_INTERVAL,
            "check has interval below minimum"
        );
        MIN_INTERVAL
    } else {
        interval
    };

    Ok(CheckSpec {
        kind,
        interval,
        timeout: if timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            timeout
        },
        success_before_passing: fields.success_before_passing,
        failures_before_critical: fields.failures_before_critical,
        failures_before_warning: fields.failures_before_warning,
    })
}

/// Parses a Go duration field; empty means zero (unset).
fn optional_duration(field: &str, text: &str) -> Result<Duration, String> {
    if text.trim().is_empty() {
        return Ok(Duration::ZERO);
    }
    registry_api::duration::parse(text).map_err(|e| format!("Invalid {field}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_spec_rejects_what_consul_rejects() {
        let err = |fields: CheckFields<'_>| parse_spec(&fields).expect_err("invalid definition");
        assert_eq!(
            err(CheckFields {
                http: "http://127.0.0.1/health",
                ..Default::default()
            }),
            "Interval must be > 0 for Script, HTTP, H2PING, TCP, UDP or gRPC checks"
        );
        assert_eq!(
            err(CheckFields {
                ttl: "10s",
                interval: "10s",
                ..Default::default()
            }),
            "Interval and TTL cannot both be specified"
        );
        assert_eq!(
            err(CheckFields::default()),
            "TTL must be > 0 for TTL checks"
        );
        assert_eq!(
            err(CheckFields {
                ttl: "0s",
                ..Default::default()
            }),
            "TTL must be > 0 for TTL checks"
        );
        assert!(err(CheckFields {
            tcp: "127.0.0.1:22",
            interval: "ten",
            ..Default::default()
        })
        .starts_with("Invalid Interval: "));
    }

    #[test]
    fn parse_spec_applies_consul_defaults() {
        let http = parse_spec(&CheckFields {
            http: "http://127.0.0.1/health",
            tcp: "127.0.0.1:22", // HTTP wins, as in Consul's addCheck
            interval: "100ms",
            success_before_passing: 2,
            failures_before_warning: 1,
            failures_before_critical: 3,
            ..Default::default()
        })
        .expect("valid HTTP check");
        assert_eq!(
            http,
            CheckSpec {
                kind: CheckKind::Http {
                    url: "http://127.0.0.1/health".into(),
                    method: "GET".into(),
                    headers: BTreeMap::new(),
                    body: String::new(),
                    tls_skip_verify: false,
                },
                interval: MIN_INTERVAL,
                timeout: DEFAULT_TIMEOUT,
                success_before_passing: 2,
                failures_before_critical: 3,
                failures_before_warning: 1,
            }
        );

        let grpc = parse_spec(&CheckFields {
            grpc: "127.0.0.1:50051/svc",
            grpc_use_tls: true,
            tls_skip_verify: true,
            interval: "30s",
            timeout: "2s",
            ..Default::default()
        })
        .expect("valid gRPC check");
        assert_eq!(
            grpc.kind,
            CheckKind::Grpc {
                target: "127.0.0.1:50051/svc".into(),
                use_tls: true,
                tls_skip_verify: true,
            }
        );
        assert_eq!(
            (grpc.interval, grpc.timeout),
            (Duration::from_secs(30), Duration::from_secs(2))
        );

        let ttl = parse_spec(&CheckFields {
            ttl: "15s",
            ..Default::default()
        })
        .expect("valid TTL check");
        assert_eq!(
            ttl.kind,
            CheckKind::Ttl {
                ttl: Duration::from_secs(15)
            }
        );
        assert_eq!(ttl.interval, Duration::ZERO);

        let tcp = parse_spec(&CheckFields {
            tcp: "127.0.0.1:22",
            interval: "5s",
            ..Default::default()
        })
        .expect("valid TCP check");
        assert_eq!(
            tcp.kind,
            CheckKind::Tcp {
                addr: "127.0.0.1:22".into()
            }
        );
    }
}
